//! The syncer driven with scripted gateway answers: no etcd, no clock.

use super::gateway::{Event, EventKind, Kv, WatchMsg};
use super::sync::{Action, Ended, Stream, Syncer};
use serde_json::{json, Value};
use std::time::Duration;

const RESYNC: Duration = Duration::from_secs(5);

fn kv(key: &str, value: Value, revision: u64) -> Kv {
    Kv { key: key.into(), value: value.to_string().into_bytes(), create_revision: revision, mod_revision: revision }
}

fn upstream(port: u16) -> Value {
    json!({"nodes": {format!("127.0.0.1:{port}"): 1}, "type": "roundrobin"})
}

fn route(port: u16) -> Value {
    json!({"upstream": upstream(port), "create_time": 1, "update_time": 1})
}

fn put(key: &str, value: Value, revision: u64) -> Event {
    Event { kind: EventKind::Put, kv: kv(key, value, revision) }
}

fn delete(key: &str, revision: u64) -> Event {
    Event {
        kind: EventKind::Delete,
        kv: Kv { key: key.into(), value: Vec::new(), create_revision: 0, mod_revision: revision },
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A syncer that has loaded `kvs` at `revision` and opened its watch.
fn watching(kvs: Vec<Kv>, revision: u64) -> Syncer {
    let mut s = Syncer::new("/apisix", RESYNC, 7);
    assert!(matches!(s.poll_action(ms(0)), Action::Range { .. }));
    s.handle_range(ms(0), revision, kvs);
    let _ = s.poll_publish();
    assert_eq!(watch_start(&mut s, ms(0)), revision + 1);
    assert_eq!(s.handle_watch(ms(0), WatchMsg::Created { revision }), Stream::Keep);
    s
}

fn watch_start(s: &mut Syncer, now: Duration) -> u64 {
    match s.poll_action(now) {
        Action::Watch { start_revision, key, range_end } => {
            assert_eq!((key.as_str(), range_end.as_str()), ("/apisix/", "/apisix0"));
            start_revision
        }
        other => panic!("a watch expected, got {other:?}"),
    }
}

fn route_ids(s: &mut Syncer) -> Option<Vec<String>> {
    s.poll_publish().map(|p| p.resources.stream_routes.into_iter().map(|(id, _)| id).collect())
}

#[test]
fn loads_everything_then_watches_from_the_load_revision_plus_one() {
    let mut s = Syncer::new("/apisix", RESYNC, 1);
    match s.poll_action(ms(0)) {
        Action::Range { key, range_end } => assert_eq!((key.as_str(), range_end.as_str()), ("/apisix/", "/apisix0")),
        other => panic!("a range expected first, got {other:?}"),
    }
    s.handle_range(
        ms(0),
        40,
        vec![kv("/apisix/stream_routes/1", route(1), 30), kv("/apisix/upstreams/u", upstream(2), 31)],
    );
    let first = s.poll_publish().expect("the first load is published");
    assert_eq!(first.revision, 40);
    assert_eq!(first.resources.stream_routes[0].0, "1");
    assert_eq!(first.resources.stream_routes[0].1["id"], "1", "id is forced to the key's id");
    assert_eq!(first.resources.upstreams.len(), 1);
    assert_eq!(watch_start(&mut s, ms(0)), 41);
}

#[test]
fn an_empty_etcd_is_published_as_an_empty_set() {
    let mut s = Syncer::new("/apisix", RESYNC, 1);
    let _ = s.poll_action(ms(0));
    s.handle_range(ms(0), 1, Vec::new());
    assert_eq!(route_ids(&mut s), Some(vec![]));
}

#[test]
fn events_are_applied_in_order_and_published_once_per_burst() {
    let mut s = watching(vec![], 10);
    let verdict = s.handle_watch(
        ms(1),
        WatchMsg::Events {
            events: vec![put("/apisix/stream_routes/a", route(1), 11), put("/apisix/stream_routes/b", route(2), 12)],
        },
    );
    assert_eq!(verdict, Stream::Keep);
    let _ = s.handle_watch(ms(1), WatchMsg::Events { events: vec![delete("/apisix/stream_routes/a", 13)] });
    assert_eq!(s.applied_revision(), 13);
    assert_eq!(route_ids(&mut s), Some(vec!["b".to_string()]));
    assert_eq!(route_ids(&mut s), None, "nothing new, nothing published");
}

#[test]
fn an_interrupted_catch_up_resumes_from_the_last_event_not_the_batch_header() {
    let mut s = watching(vec![], 17);
    // Catch-up batches carry etcd's current revision (2517) in their header;
    // the parsed message keeps only the events, whose own revisions count.
    let batch: Vec<Event> = (18..=1017).map(|r| put("/apisix/upstreams/u", upstream(r as u16), r)).collect();
    let _ = s.handle_watch(ms(1), WatchMsg::Events { events: batch });
    s.handle_watch_ended(ms(2), Ended::IdleTimeout);
    assert_eq!(watch_start(&mut s, ms(2)), 1018);
}

#[test]
fn after_a_broken_watch_everything_is_read_again_before_watching() {
    let mut s = watching(vec![kv("/apisix/stream_routes/1", route(1), 5)], 5);
    s.handle_watch_ended(ms(1), Ended::Broken("peer disconnected".into()));
    let Action::WaitUntil(until) = s.poll_action(ms(1)) else { panic!("a back-off expected") };
    // etcd may have been replaced by an empty one that already passed revision 5:
    // only a full read can tell (sim/tests/etcd_sync.rs, seed 120).
    assert!(matches!(s.poll_action(until), Action::Range { .. }), "a re-read, not a resumed watch");
    s.handle_range(until, 7, vec![kv("/apisix/stream_routes/2", route(2), 7)]);
    assert_eq!(route_ids(&mut s), Some(vec!["2".to_string()]), "keys the new etcd lacks are gone");
    assert_eq!(watch_start(&mut s, until), 8);
}

#[test]
fn compaction_rereads_everything_and_a_delete_missed_meanwhile_is_applied() {
    let mut s =
        watching(vec![kv("/apisix/stream_routes/1", route(1), 5), kv("/apisix/stream_routes/2", route(2), 6)], 6);
    assert_eq!(s.handle_watch(ms(1), WatchMsg::Compacted { compact_revision: 20 }), Stream::Close);
    assert!(matches!(s.poll_action(ms(1)), Action::Range { .. }), "a compaction re-reads at once, no back-off");
    // Route 2 was deleted while this node was away; route 1 is unchanged.
    s.handle_range(ms(1), 25, vec![kv("/apisix/stream_routes/1", route(1), 5)]);
    assert_eq!(route_ids(&mut s), Some(vec!["1".to_string()]));
    assert_eq!(watch_start(&mut s, ms(1)), 26, "never resume from compact_revision itself");
}

#[test]
fn a_reread_that_changes_nothing_publishes_nothing() {
    let objects = vec![kv("/apisix/stream_routes/1", route(1), 5), kv("/apisix/upstreams/1", upstream(1), 6)];
    let mut s = watching(objects.clone(), 6);
    let _ = s.handle_watch(ms(1), WatchMsg::Compacted { compact_revision: 9 });
    let _ = s.poll_action(ms(1));
    s.handle_range(ms(1), 30, objects);
    assert!(s.poll_publish().is_none(), "unchanged objects are reused: balancers and health keep their state");
    assert_eq!(s.applied_revision(), 30);
}

#[test]
fn a_wiped_etcd_is_noticed_on_the_created_line_and_reread() {
    let mut s = Syncer::new("/apisix", RESYNC, 3);
    let _ = s.poll_action(ms(0));
    s.handle_range(ms(0), 2517, vec![kv("/apisix/stream_routes/1", route(1), 2000)]);
    let _ = s.poll_publish();
    assert_eq!(watch_start(&mut s, ms(0)), 2518);
    // A fresh data dir: the watch would just wait for revision 2518.
    assert_eq!(s.handle_watch(ms(1), WatchMsg::Created { revision: 1 }), Stream::Close);
    assert!(matches!(s.poll_action(ms(1)), Action::Range { .. }));
    s.handle_range(ms(1), 3, vec![kv("/apisix/stream_routes/9", route(9), 3)]);
    assert_eq!(route_ids(&mut s), Some(vec!["9".to_string()]), "what the new etcd holds is served");
    assert_eq!(watch_start(&mut s, ms(1)), 4);
}

#[test]
fn a_wiped_etcd_is_noticed_on_a_range_too() {
    let mut s = watching(vec![kv("/apisix/stream_routes/1", route(1), 50)], 50);
    let _ = s.handle_watch(ms(1), WatchMsg::Compacted { compact_revision: 1 });
    assert!(matches!(s.poll_action(ms(1)), Action::Range { .. }));
    s.handle_range(ms(1), 2, vec![]);
    assert_eq!(route_ids(&mut s), Some(vec![]));
    assert_eq!(s.applied_revision(), 2, "the applied revision follows etcd down");
}

#[test]
fn while_etcd_is_away_the_last_set_stays_and_retries_back_off_forever() {
    let mut s = watching(vec![kv("/apisix/stream_routes/1", route(1), 5)], 5);
    // SIGTERM: an error line (without a newline), then the end of the body.
    let closing = WatchMsg::Error { message: "transport is closing".into() };
    assert_eq!(s.handle_watch(ms(0), closing), Stream::Close);
    assert!(!s.health().connected);
    assert_eq!(s.health().stale_since, Some(ms(0)));
    let mut now = ms(0);
    let mut delays = Vec::new();
    for _ in 0..12 {
        let Action::WaitUntil(until) = s.poll_action(now) else { panic!("a back-off expected") };
        delays.push(until - now);
        now = until;
        assert!(matches!(s.poll_action(now), Action::Range { .. }), "each retry re-reads");
        s.handle_range_failed(now, "connection refused".into());
        assert!(s.poll_publish().is_none(), "the last good set is never cleared");
    }
    assert!(delays[0] >= ms(100) && delays[0] <= ms(150), "{delays:?}");
    assert!(delays.windows(2).take(5).all(|w| w[1] > w[0]), "doubling: {delays:?}");
    assert!(delays.iter().all(|d| *d <= RESYNC * 3 / 2), "capped at resync_delay + 50%: {delays:?}");
    assert_eq!(s.health().stale_since, Some(ms(0)), "stale since the first failure");
    // etcd is back: everything is read again (route 1 was deleted meanwhile), then watched.
    let Action::WaitUntil(until) = s.poll_action(now) else { panic!("back-off") };
    assert!(matches!(s.poll_action(until), Action::Range { .. }));
    s.handle_range(until, 9, vec![]);
    assert!(s.health().connected && s.health().stale_since.is_none());
    assert_eq!(route_ids(&mut s), Some(vec![]));
    assert_eq!(watch_start(&mut s, until), 10);
}

#[test]
fn an_idle_timeout_reconnects_at_once() {
    let mut s = watching(vec![], 5);
    s.handle_watch_ended(ms(50_000), Ended::IdleTimeout);
    assert_eq!(watch_start(&mut s, ms(50_000)), 6, "no back-off after a plain idle timeout");
    assert!(s.health().connected);
}

#[test]
fn a_failed_first_load_is_retried_as_a_load() {
    let mut s = Syncer::new("/apisix", RESYNC, 1);
    let _ = s.poll_action(ms(0));
    s.handle_range_failed(ms(0), "connection refused".into());
    let Action::WaitUntil(until) = s.poll_action(ms(0)) else { panic!("back-off") };
    assert!(matches!(s.poll_action(until), Action::Range { .. }));
}

#[test]
fn periodic_progress_marks_move_the_resume_point() {
    let mut s = watching(vec![], 5);
    let _ = s.handle_watch(ms(1), WatchMsg::Progress { revision: 90 });
    s.handle_watch_ended(ms(2), Ended::IdleTimeout);
    assert_eq!(watch_start(&mut s, ms(2)), 91);
}

#[test]
fn an_invalid_update_keeps_the_previous_version_and_an_invalid_new_object_is_skipped() {
    let mut s = watching(vec![kv("/apisix/upstreams/1", upstream(1), 5)], 5);
    let bad = json!({"nodes": {"127.0.0.1:1": 1}, "type": "roundrobinn"});
    let _ = s.handle_watch(
        ms(1),
        WatchMsg::Events {
            events: vec![put("/apisix/upstreams/1", bad.clone(), 6), put("/apisix/upstreams/2", bad, 7)],
        },
    );
    assert!(s.poll_publish().is_none(), "nothing valid changed");
    assert_eq!(s.applied_revision(), 7);
    let _ = s.handle_watch(ms(1), WatchMsg::Compacted { compact_revision: 7 });
    let _ = s.poll_action(ms(1));
    s.handle_range(
        ms(1),
        8,
        vec![kv("/apisix/upstreams/1", json!({"nodes": "x"}), 6), kv("/apisix/upstreams/3", upstream(3), 8)],
    );
    let published = s.poll_publish().expect("upstream 3 is new");
    let upstreams: Vec<&Value> = published.resources.upstreams.iter().map(|(_, v)| v).collect();
    assert_eq!(upstreams.len(), 2);
    assert_eq!(upstreams[0]["nodes"], upstream(1)["nodes"], "the previous valid version of 1 is kept");
}

#[test]
fn foreign_keys_placeholders_and_unknown_plugins() {
    let mut s = Syncer::new("/apisix", RESYNC, 1);
    let _ = s.poll_action(ms(0));
    let mut with_plugin = route(1);
    with_plugin["plugins"] = json!({"limit-conn": {"conn": 1}});
    s.handle_range(
        ms(0),
        9,
        vec![
            Kv {
                key: "/apisix/stream_routes/".into(),
                value: b"init_dir".to_vec(),
                create_revision: 2,
                mod_revision: 2,
            },
            kv("/apisix/routes/1", json!({"uri": "/"}), 3),
            kv("/apisix/gen_id", json!(1), 4),
            kv("/apisix/stream_routes/p", with_plugin, 5),
            Kv { key: "/apisix/stream_routes/n".into(), value: b"[1]".to_vec(), create_revision: 6, mod_revision: 6 },
        ],
    );
    let published = s.poll_publish().unwrap();
    assert_eq!(published.resources.stream_routes.len(), 1);
    let (id, value) = &published.resources.stream_routes[0];
    assert_eq!(id, "p");
    assert!(value.get("plugins").is_none(), "a plugin Strait lacks is dropped, the route kept");
}
