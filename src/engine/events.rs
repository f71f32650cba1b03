//! The in-process event bus: engine operations publish what they did (an image tagged, a
//! build finished, a container started); the daemon's `/events` streams it. The bus keeps
//! the last [`HISTORY`] events so a subscriber can ask for those since a time.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::broadcast;

/// How many past events the bus remembers (for `since`).
pub const HISTORY: usize = 1024;

/// One thing that happened, in docker's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `image`, `container`, `volume`, `network`, `builder`.
    pub kind: String,
    /// `tag`, `untag`, `delete`, `pull`, `push`, `load`, `save`, `create`, `start`, …
    pub action: String,
    /// The object's ID (image ID, container ID, volume name).
    pub id: String,
    /// `name`, `image`, labels…
    pub attributes: BTreeMap<String, String>,
    /// Nanoseconds since the epoch.
    pub time_nano: i64,
}

impl Event {
    pub fn new(kind: &str, action: &str, id: &str) -> Event {
        let time_nano = i64::try_from(crate::run::state::now_nanos()).unwrap_or(i64::MAX);
        Event {
            kind: kind.into(),
            action: action.into(),
            id: id.into(),
            attributes: BTreeMap::new(),
            time_nano,
        }
    }

    pub fn with(mut self, key: &str, value: &str) -> Event {
        self.attributes.insert(key.into(), value.into());
        self
    }
}

/// Publishers send, subscribers get every event from the moment they subscribe (and the
/// remembered ones before it).
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    history: Mutex<VecDeque<Event>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new()
    }
}

impl EventBus {
    pub fn new() -> EventBus {
        EventBus {
            tx: broadcast::channel(HISTORY).0,
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
        }
    }

    /// Records and broadcasts an event (nobody listening is fine).
    pub fn publish(&self, event: Event) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(event.clone());
        // Under the history lock, so a subscriber sees each event exactly once.
        let _ = self.tx.send(event);
    }

    /// The remembered events and a receiver for everything after them.
    pub fn subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        self.subscribe_with(true)
    }

    /// [`EventBus::subscribe`], copying the remembered events only when `history` (a
    /// client that asked for `since`); the live feed starts where they end either way.
    pub fn subscribe_with(&self, history: bool) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let remembered = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let past = if history {
            remembered.iter().cloned().collect()
        } else {
            Vec::new()
        };
        (past, self.tx.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_get_history_then_live_events() {
        let bus = EventBus::new();
        bus.publish(Event::new("image", "tag", "sha256:1").with("name", "a:latest"));
        let (past, mut rx) = bus.subscribe();
        assert_eq!(past.len(), 1);
        assert_eq!(past[0].attributes["name"], "a:latest");
        bus.publish(Event::new("image", "untag", "sha256:1"));
        let next = rx.try_recv().expect("live event");
        assert_eq!(next.action, "untag");
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn history_is_bounded() {
        let bus = EventBus::new();
        for i in 0..HISTORY + 10 {
            bus.publish(Event::new("image", "tag", &i.to_string()));
        }
        let (past, _) = bus.subscribe();
        assert_eq!(past.len(), HISTORY);
        assert_eq!(past[0].id, "10");
    }
}
