//! The history checker on hand-made histories (no cluster): valid ones pass, each kind of bad
//! one is caught, with the events that show it.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tests::checker::{
    AnomalyKind, CheckOptions, FinalState, Report, check, check_with, compare_final_states,
};
use tests::history::{
    Event, EventKind, History, HistoryWriter, Op, Outcome, Recorder, Value, read_history,
};
use tuplespace::{Space, Template, Tuple, TupleId};

// ---------------------------------------------------------------------------------------------
// A tiny language for hand-made histories: each op with its invocation and completion times.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct H {
    events: Vec<Event>,
    next_op: u64,
}

fn tup(s: &str) -> Tuple {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn tpl(s: &str) -> Template {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn found(r: Option<(TupleId, &str)>) -> Value {
    match r {
        Some((id, t)) => Value::found(Some((id, &tup(t)))),
        None => Value::none(),
    }
}

impl H {
    #[allow(clippy::too_many_arguments)]
    fn op(
        &mut self,
        process: u64,
        f: Op,
        input: Value,
        inv: u64,
        kind: EventKind,
        output: Value,
        comp: u64,
    ) -> u64 {
        self.next_op += 1;
        let op_id = self.next_op;
        let event = |kind, value, time_ns| Event {
            kind,
            process,
            op_id,
            f,
            value,
            time_ns,
        };
        self.events.push(event(EventKind::Invoke, input, inv));
        self.events.push(event(kind, output, comp));
        op_id
    }

    fn out(&mut self, p: u64, t: &str, inv: u64, comp: u64, id: TupleId) -> u64 {
        self.op(
            p,
            Op::Out,
            Value::tuple(&tup(t)),
            inv,
            EventKind::Ok,
            Value::id(Some(id)),
            comp,
        )
    }

    fn out_info(&mut self, p: u64, t: &str, inv: u64, comp: u64) -> u64 {
        self.op(
            p,
            Op::Out,
            Value::tuple(&tup(t)),
            inv,
            EventKind::Info,
            Value::error("timeout"),
            comp,
        )
    }

    fn out_fail(&mut self, p: u64, t: &str, inv: u64, comp: u64) -> u64 {
        self.op(
            p,
            Op::Out,
            Value::tuple(&tup(t)),
            inv,
            EventKind::Fail,
            Value::error("no leader"),
            comp,
        )
    }

    fn take(
        &mut self,
        p: u64,
        f: Op,
        tp: &str,
        inv: u64,
        comp: u64,
        r: Option<(TupleId, &str)>,
    ) -> u64 {
        self.op(
            p,
            f,
            Value::template(&tpl(tp)),
            inv,
            EventKind::Ok,
            found(r),
            comp,
        )
    }

    fn take_info(&mut self, p: u64, tp: &str, inv: u64, comp: u64) -> u64 {
        self.op(
            p,
            Op::In,
            Value::template(&tpl(tp)),
            inv,
            EventKind::Info,
            Value::none(),
            comp,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn rd(
        &mut self,
        p: u64,
        f: Op,
        tp: &str,
        after: TupleId,
        inv: u64,
        comp: u64,
        r: Option<(TupleId, &str)>,
    ) -> u64 {
        self.op(
            p,
            f,
            Value::read(&tpl(tp), after),
            inv,
            EventKind::Ok,
            found(r),
            comp,
        )
    }

    fn rd_all(&mut self, p: u64, tp: &str, inv: u64, comp: u64, items: &[(TupleId, &str)]) -> u64 {
        let items: Vec<(TupleId, Tuple)> = items.iter().map(|&(id, t)| (id, tup(t))).collect();
        let value = Value::items(items.iter().map(|(id, t)| (*id, t)));
        self.op(
            p,
            Op::RdAll,
            Value::template(&tpl(tp)),
            inv,
            EventKind::Ok,
            value,
            comp,
        )
    }

    fn cas(&mut self, p: u64, tp: &str, t: &str, inv: u64, comp: u64, id: Option<TupleId>) -> u64 {
        self.op(
            p,
            Op::Cas,
            Value::cas(&tpl(tp), &tup(t)),
            inv,
            EventKind::Ok,
            Value::id(id),
            comp,
        )
    }

    fn cas_info(&mut self, p: u64, tp: &str, t: &str, inv: u64, comp: u64) -> u64 {
        self.op(
            p,
            Op::Cas,
            Value::cas(&tpl(tp), &tup(t)),
            inv,
            EventKind::Info,
            Value::none(),
            comp,
        )
    }

    /// The events in time order.
    fn events(&self) -> Vec<Event> {
        let mut events = self.events.clone();
        events.sort_by_key(|e| e.time_ns);
        events
    }
}

fn finals(nodes: &[u64], items: &[(TupleId, &str)]) -> Vec<FinalState> {
    nodes
        .iter()
        .map(|&n| (n, items.iter().map(|&(id, t)| (id, tup(t))).collect()))
        .collect()
}

const K1: &str = r#"("k", 1, ?int)"#;
const C1: &str = r#"("cas", 1, _)"#;

fn assert_valid(report: &Report) {
    assert!(report.is_valid(), "expected no anomalies:\n{report}");
    assert!(
        report.unknown.is_empty(),
        "expected no unknown partitions:\n{report}"
    );
}

fn assert_caught(report: &Report, kind: AnomalyKind) {
    assert!(report.has(kind), "expected a {kind} anomaly:\n{report}");
    println!("{report}");
}

/// Whether the anomaly of this kind shows the events of every one of these ops.
fn shows(report: &Report, kind: AnomalyKind, ops: &[u64]) -> bool {
    report
        .anomalies
        .iter()
        .filter(|a| a.kind == kind)
        .any(|a| ops.iter().all(|op| a.events.iter().any(|e| e.op_id == *op)))
}

// ---------------------------------------------------------------------------------------------
// Valid histories
// ---------------------------------------------------------------------------------------------

fn valid_history() -> (H, Vec<FinalState>) {
    let mut h = H::default();
    h.out(1, r#"("k", 1, 1)"#, 0, 10, 1);
    h.out(2, r#"("k", 1, 2)"#, 5, 15, 2);
    // Concurrent with both outs: takes the oldest, 1.
    h.take(3, Op::In, K1, 8, 20, Some((1, r#"("k", 1, 1)"#)));
    // After the in: 2 is the oldest.
    h.rd(4, Op::Rd, K1, 0, 12, 25, Some((2, r#"("k", 1, 2)"#)));
    h.rd(1, Op::Rdp, K1, 2, 26, 28, None);
    h.take(1, Op::Inp, K1, 30, 35, Some((2, r#"("k", 1, 2)"#)));
    h.take(2, Op::Inp, K1, 40, 45, None);
    h.rd_all(3, K1, 50, 55, &[]);
    // A blocking in served by a later out.
    h.take(4, Op::In, K1, 60, 90, Some((5, r#"("k", 1, 3)"#)));
    h.out(1, r#"("k", 1, 3)"#, 70, 80, 5);
    // Another key, interleaved.
    h.out(2, r#"("k", 2, 4)"#, 60, 65, 4);
    h.rd_all(3, r#"("k", 2, _)"#, 66, 67, &[(4, r#"("k", 2, 4)"#)]);
    // Two concurrent cas: one inserts, the other sees it.
    h.cas(5, C1, r#"("cas", 1, "a")"#, 0, 10, Some(3));
    h.cas(6, C1, r#"("cas", 1, "b")"#, 5, 20, None);
    let f = finals(
        &[1, 2, 3],
        &[(3, r#"("cas", 1, "a")"#), (4, r#"("k", 2, 4)"#)],
    );
    (h, f)
}

#[test]
fn a_valid_concurrent_history_passes() {
    let (h, f) = valid_history();
    let report = check(&h.events(), &f);
    assert_valid(&report);
    assert_eq!(report.ops, 14);
    assert_eq!(report.partitions, 3);
    // Also without final states.
    assert_valid(&check(&h.events(), &[]));
}

#[test]
fn jsonl_round_trip() {
    let (h, f) = valid_history();
    let events = h.events();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let mut w = HistoryWriter::create(&path).unwrap();
    for e in &events[..3] {
        w.write(e).unwrap();
    }
    drop(w);
    let mut w = HistoryWriter::append(&path).unwrap();
    w.write_all(&events[3..]).unwrap();
    let back = read_history(&path).unwrap();
    assert_eq!(back, events);
    assert_eq!(History::read(&path).unwrap().events, events);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), events.len());
    assert!(text.lines().next().unwrap().starts_with(r#"{"kind":"invoke","process":1,"op_id":1,"f":"out","value":{"tuple":"(\"k\", 1, 1)"},"time_ns":0}"#));
    assert_valid(&check(&back, &f));
    // Pairing.
    let ops = History::new(back).complete_ops();
    assert_eq!(ops.len(), 14);
    let first = &ops[0];
    assert_eq!(
        (first.f, first.invoke_ns, first.complete_ns),
        (Op::Out, 0, 10)
    );
    assert_eq!(first.output, Outcome::Ok(Value::id(Some(1))));
    // A bad line is reported with its number.
    std::fs::write(&path, format!("{}\nnot json\n", events[0])).unwrap();
    let err = read_history(&path).unwrap_err();
    assert!(err.to_string().starts_with("line 2:"), "{err}");
}

#[test]
fn info_ops_that_took_effect_are_accepted() {
    let mut h = H::default();
    // An out whose outcome is unknown, observed later with id 4.
    h.out_info(1, r#"("k", 1, 5)"#, 0, 5);
    h.rd(2, Op::Rd, K1, 0, 20, 30, Some((4, r#"("k", 1, 5)"#)));
    // An acknowledged out taken by an `in` whose outcome is unknown.
    h.out(3, r#"("k", 2, 1)"#, 0, 10, 6);
    h.take_info(4, r#"("k", 2, ?int)"#, 20, 25);
    h.take(3, Op::Inp, r#"("k", 2, ?int)"#, 40, 50, None);
    // A cas with unknown outcome that inserted (seen in the final state), then one that matched.
    h.cas_info(5, C1, r#"("cas", 1, "x")"#, 0, 5);
    h.cas(6, C1, r#"("cas", 1, "y")"#, 20, 30, None);
    let f = finals(&[1, 2], &[(4, r#"("k", 1, 5)"#), (7, r#"("cas", 1, "x")"#)]);
    assert_valid(&check(&h.events(), &f));
}

#[test]
fn info_ops_never_observed_are_accepted() {
    let mut h = H::default();
    h.out_info(1, r#"("k", 1, 7)"#, 0, 5);
    h.take(2, Op::Inp, K1, 20, 30, None);
    h.take_info(3, K1, 40, 45);
    h.rd_all(2, K1, 50, 60, &[]);
    // A cas with unknown outcome, never seen: it may still explain a cas that found a match.
    h.cas_info(4, C1, r#"("cas", 1, "x")"#, 0, 5);
    h.cas(5, C1, r#"("cas", 1, "y")"#, 20, 30, None);
    assert_valid(&check(&h.events(), &[]));
    // With a final state the info out and cas must not have happened (or been taken): the
    // out is simply never observed; the cas that matched has nothing to match.
    let report = check(&h.events(), &finals(&[1], &[]));
    assert_caught(&report, AnomalyKind::NotLinearizable);
    assert_eq!(report.anomalies.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Bad histories: each must be caught
// ---------------------------------------------------------------------------------------------

#[test]
fn a_lost_write_is_caught() {
    let mut h = H::default();
    let out = h.out(1, r#"("k", 1, 1)"#, 0, 10, 1);
    h.out(2, r#"("k", 1, 2)"#, 20, 30, 2);
    h.rd(3, Op::Rdp, K1, 0, 40, 50, Some((1, r#"("k", 1, 1)"#)));
    let report = check(&h.events(), &finals(&[1, 2, 3], &[(2, r#"("k", 1, 2)"#)]));
    assert_caught(&report, AnomalyKind::LostWrite);
    assert!(shows(&report, AnomalyKind::LostWrite, &[out]));
    // Its slice is the out and the read that saw it: 4 events.
    let lost = report
        .anomalies
        .iter()
        .find(|a| a.kind == AnomalyKind::LostWrite)
        .unwrap();
    assert_eq!(lost.events.len(), 4);
    assert!(report.has(AnomalyKind::NotLinearizable));
}

#[test]
fn a_lost_write_an_info_take_may_explain_is_left_to_linearizability() {
    let mut h = H::default();
    h.out(1, r#"("k", 1, 1)"#, 0, 10, 1);
    h.out(1, r#"("k", 1, 2)"#, 20, 30, 2);
    // One info take can explain one missing tuple, not two.
    h.take_info(2, K1, 40, 45);
    let report = check(&h.events(), &finals(&[1], &[]));
    assert!(!report.has(AnomalyKind::LostWrite), "{report}");
    assert_caught(&report, AnomalyKind::NotLinearizable);
    // With one of them left, it is fine.
    assert_valid(&check(&h.events(), &finals(&[1], &[(2, r#"("k", 1, 2)"#)])));
}

#[test]
fn a_double_take_is_caught() {
    let mut h = H::default();
    let out = h.out(1, r#"("k", 1, 1)"#, 0, 10, 1);
    let a = h.take(2, Op::In, K1, 20, 30, Some((1, r#"("k", 1, 1)"#)));
    let b = h.take(3, Op::Inp, K1, 25, 35, Some((1, r#"("k", 1, 1)"#)));
    let report = check(&h.events(), &finals(&[1], &[]));
    assert_caught(&report, AnomalyKind::DoubleTake);
    assert!(shows(&report, AnomalyKind::DoubleTake, &[out, a, b]));
    let dt = report
        .anomalies
        .iter()
        .find(|a| a.kind == AnomalyKind::DoubleTake)
        .unwrap();
    assert_eq!(dt.events.len(), 6, "the out and the two takes");
    // Without final states too.
    assert!(check(&h.events(), &[]).has(AnomalyKind::DoubleTake));
}

#[test]
fn a_stale_read_is_caught() {
    let mut h = H::default();
    let out = h.out(1, r#"("k", 1, 1)"#, 0, 10, 1);
    let take = h.take(2, Op::In, K1, 20, 30, Some((1, r#"("k", 1, 1)"#)));
    let read = h.rd(3, Op::Rd, K1, 0, 40, 50, Some((1, r#"("k", 1, 1)"#)));
    // Unrelated traffic on the key after it.
    h.out(1, r#"("k", 1, 2)"#, 60, 70, 2);
    h.take(2, Op::Inp, K1, 80, 90, Some((2, r#"("k", 1, 2)"#)));
    for f in [finals(&[1], &[]), vec![]] {
        let report = check(&h.events(), &f);
        assert_caught(&report, AnomalyKind::NotLinearizable);
        assert_eq!(report.anomalies.len(), 1, "{report}");
        assert!(shows(
            &report,
            AnomalyKind::NotLinearizable,
            &[out, take, read]
        ));
        let a = &report.anomalies[0];
        assert!(a.description.contains(&format!("op {read} ")), "{report}");
        assert_eq!(
            a.events.len(),
            6,
            "only the out, the in and the rd: {report}"
        );
    }
    // The same read concurrent with the in is fine.
    let mut h = H::default();
    h.out(1, r#"("k", 1, 1)"#, 0, 10, 1);
    h.take(2, Op::In, K1, 20, 30, Some((1, r#"("k", 1, 1)"#)));
    h.rd(3, Op::Rd, K1, 0, 25, 50, Some((1, r#"("k", 1, 1)"#)));
    assert_valid(&check(&h.events(), &finals(&[1], &[])));
}

#[test]
fn a_stale_rd_all_is_caught() {
    let mut h = H::default();
    h.out(1, r#"("k", 1, 1)"#, 0, 10, 1);
    h.out(1, r#"("k", 1, 2)"#, 11, 12, 2);
    h.take(2, Op::Inp, K1, 20, 30, Some((1, r#"("k", 1, 1)"#)));
    h.rd_all(
        3,
        K1,
        40,
        50,
        &[(1, r#"("k", 1, 1)"#), (2, r#"("k", 1, 2)"#)],
    );
    let report = check(&h.events(), &finals(&[1], &[(2, r#"("k", 1, 2)"#)]));
    assert_caught(&report, AnomalyKind::NotLinearizable);
}

#[test]
fn a_phantom_is_caught() {
    let mut h = H::default();
    h.out(1, r#"("k", 1, 1)"#, 0, 10, 1);
    let read = h.rd(2, Op::Rdp, K1, 1, 20, 30, Some((9, r#"("k", 1, 99)"#)));
    let report = check(&h.events(), &finals(&[1], &[(1, r#"("k", 1, 1)"#)]));
    assert_caught(&report, AnomalyKind::Phantom);
    assert!(shows(&report, AnomalyKind::Phantom, &[read]));
    // In a final state too.
    let report = check(&[], &finals(&[1], &[(3, r#"("k", 1, 3)"#)]));
    assert_caught(&report, AnomalyKind::Phantom);
}

#[test]
fn a_failed_write_that_took_effect_is_caught() {
    let mut h = H::default();
    let out = h.out_fail(1, r#"("k", 1, 1)"#, 0, 10);
    h.take(2, Op::Inp, K1, 20, 30, Some((1, r#"("k", 1, 1)"#)));
    let report = check(&h.events(), &finals(&[1], &[]));
    assert_caught(&report, AnomalyKind::Phantom);
    assert!(shows(&report, AnomalyKind::Phantom, &[out]));
}

#[test]
fn an_id_with_two_tuples_is_caught() {
    let mut h = H::default();
    h.out(1, r#"("k", 1, 1)"#, 0, 10, 1);
    h.rd(2, Op::Rdp, K1, 0, 20, 30, Some((1, r#"("k", 1, 2)"#)));
    let report = check(&h.events(), &[]);
    assert_caught(&report, AnomalyKind::IdConflict);
}

#[test]
fn a_non_fifo_take_is_caught() {
    let mut h = H::default();
    let old = h.out(1, r#"("k", 1, 1)"#, 0, 10, 1);
    let new = h.out(1, r#"("k", 1, 2)"#, 20, 30, 2);
    let take = h.take(2, Op::In, K1, 40, 50, Some((2, r#"("k", 1, 2)"#)));
    for f in [finals(&[1], &[(1, r#"("k", 1, 1)"#)]), vec![]] {
        let report = check(&h.events(), &f);
        assert_caught(&report, AnomalyKind::NotLinearizable);
        assert!(shows(
            &report,
            AnomalyKind::NotLinearizable,
            &[old, new, take]
        ));
    }
    // Fine if another take took the older one concurrently.
    let mut h = H::default();
    h.out(1, r#"("k", 1, 1)"#, 0, 10, 1);
    h.out(1, r#"("k", 1, 2)"#, 20, 30, 2);
    h.take(2, Op::In, K1, 40, 50, Some((2, r#"("k", 1, 2)"#)));
    h.take(3, Op::Inp, K1, 35, 60, Some((1, r#"("k", 1, 1)"#)));
    assert_valid(&check(&h.events(), &finals(&[1], &[])));
    // Also a non-FIFO rd (with `after`).
    let mut h = H::default();
    h.out(1, r#"("k", 1, 1)"#, 0, 10, 1);
    h.out(1, r#"("k", 1, 2)"#, 20, 30, 2);
    h.out(1, r#"("k", 1, 3)"#, 31, 32, 3);
    h.rd(2, Op::Rdp, K1, 1, 40, 50, Some((3, r#"("k", 1, 3)"#)));
    assert_caught(&check(&h.events(), &[]), AnomalyKind::NotLinearizable);
}

#[test]
fn a_none_while_a_match_was_present_is_caught() {
    let mut h = H::default();
    h.out(1, r#"("k", 1, 1)"#, 0, 10, 1);
    // A blocking in the server timed out, though the tuple was there all along.
    h.take(2, Op::In, K1, 20, 1_000, None);
    assert_caught(&check(&h.events(), &[]), AnomalyKind::NotLinearizable);
}

#[test]
fn a_cas_that_inserted_while_a_match_existed_is_caught() {
    let mut h = H::default();
    let a = h.cas(1, C1, r#"("cas", 1, "a")"#, 0, 10, Some(1));
    let b = h.cas(2, C1, r#"("cas", 1, "b")"#, 20, 30, Some(2));
    let f = finals(
        &[1],
        &[(1, r#"("cas", 1, "a")"#), (2, r#"("cas", 1, "b")"#)],
    );
    let report = check(&h.events(), &f);
    assert_caught(&report, AnomalyKind::NotLinearizable);
    assert!(shows(&report, AnomalyKind::NotLinearizable, &[a, b]));
    // And one that found a match where there was none.
    let mut h = H::default();
    h.cas(1, C1, r#"("cas", 1, "a")"#, 0, 10, None);
    assert_caught(&check(&h.events(), &[]), AnomalyKind::NotLinearizable);
}

#[test]
fn ids_that_go_backwards_are_caught() {
    let mut h = H::default();
    h.out(1, r#"("k", 1, 1)"#, 0, 10, 5);
    h.out(1, r#"("k", 1, 2)"#, 20, 30, 3);
    assert_caught(&check(&h.events(), &[]), AnomalyKind::NotLinearizable);
}

#[test]
fn replicas_that_differ_are_caught() {
    let mut h = H::default();
    let out = h.out(1, r#"("k", 1, 1)"#, 0, 10, 1);
    let f = vec![
        (1, vec![(1, tup(r#"("k", 1, 1)"#))]),
        (2, vec![(1, tup(r#"("k", 1, 1)"#))]),
        (3, vec![]),
    ];
    let report = check(&h.events(), &f);
    assert_caught(&report, AnomalyKind::Divergence);
    assert_eq!(report.count(AnomalyKind::Divergence), 1);
    assert!(shows(&report, AnomalyKind::Divergence, &[out]));
    let a = compare_final_states(&f);
    assert_eq!(a.len(), 1);
    assert!(a[0].description.starts_with("node 3 "), "{}", a[0]);
    assert!(compare_final_states(&f[..2]).is_empty());
}

#[test]
fn a_malformed_history_is_reported() {
    let mut h = H::default();
    h.op(
        1,
        Op::Out,
        Value::none(),
        0,
        EventKind::Ok,
        Value::id(Some(1)),
        1,
    );
    let mut events = h.events();
    events.push(Event {
        kind: EventKind::Ok,
        process: 9,
        op_id: 99,
        f: Op::Inp,
        value: Value::none(),
        time_ns: 5,
    });
    let report = check(&events, &[]);
    assert_eq!(report.count(AnomalyKind::Malformed), 2, "{report}");
}

#[test]
fn the_report_prints_its_anomalies() {
    let mut h = H::default();
    h.out(1, r#"("k", 1, 1)"#, 0, 10, 1);
    h.take(2, Op::In, K1, 20, 30, Some((1, r#"("k", 1, 1)"#)));
    h.take(3, Op::In, K1, 40, 50, Some((1, r#"("k", 1, 1)"#)));
    let text = check(&h.events(), &[]).to_string();
    assert!(
        text.starts_with("checker: 3 operations, 1 partitions"),
        "{text}"
    );
    assert!(
        text.contains("[double-take] id #1 was taken 2 times"),
        "{text}"
    );
    assert!(
        text.contains(r#"    {"kind":"invoke","process":1,"op_id":1,"f":"out""#),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Big valid histories from a simulated space
// ---------------------------------------------------------------------------------------------

/// A random operation on one of `keys` keys (and `keys / 4 + 1` cas keys).
fn random_op(rng: &mut StdRng, keys: i64, uniq: &mut i64, last_id: TupleId) -> (Op, Value) {
    *uniq += 1;
    let k = rng.gen_range(0..keys);
    let c = rng.gen_range(0..keys / 4 + 1);
    let tmpl = if rng.gen_bool(0.5) {
        tpl(&format!(r#"("k", {k}, ?int)"#))
    } else {
        tpl(&format!(r#"("k", {k}, _)"#))
    };
    match rng.gen_range(0..100) {
        0..30 => (
            Op::Out,
            Value::tuple(&tup(&format!(r#"("k", {k}, {uniq})"#))),
        ),
        30..45 => (Op::Inp, Value::template(&tmpl)),
        45..55 => (Op::In, Value::template(&tmpl)),
        55..63 => (Op::Rd, Value::read(&tmpl, rng.gen_range(0..=last_id))),
        63..72 => (Op::Rdp, Value::read(&tmpl, 0)),
        72..80 => (Op::RdAll, Value::template(&tmpl)),
        80..95 => (
            Op::Cas,
            Value::cas(
                &tpl(&format!(r#"("cas", {c}, _)"#)),
                &tup(&format!(r#"("cas", {c}, {uniq})"#)),
            ),
        ),
        _ => (
            Op::Inp,
            Value::template(&tpl(&format!(r#"("cas", {c}, _)"#))),
        ),
    }
}

/// Applies an op to the space; returns its ok value.
fn apply(space: &mut Space, f: Op, input: &Value) -> Value {
    let template = || input.parsed_template().unwrap().unwrap();
    match f {
        Op::Out => Value::id(Some(
            space.out(input.parsed_tuple().unwrap().unwrap(), None).id,
        )),
        Op::In | Op::Inp => {
            let got = space.inp(&template());
            Value::found(got.as_ref().map(|(id, t)| (*id, t)))
        }
        Op::Rd | Op::Rdp => Value::found(space.rdp(&template(), input.after.unwrap_or(0))),
        Op::RdAll => Value::items(space.rd_all(&template(), &Default::default())),
        Op::Cas => Value::id(
            space
                .cas(&template(), input.parsed_tuple().unwrap().unwrap(), None)
                .map(|o| o.id),
        ),
    }
}

/// A linearizable history: `processes` clients each run `per_process` ops; every op takes
/// effect on a real `Space` at a random moment between its invocation and completion, except
/// that a fraction `info` of them end `info` (two in five of those never take effect). A
/// blocking op lingers before taking effect: at each turn it stays put with probability `linger`. Returns the events and the final state.
fn simulate(
    seed: u64,
    processes: u64,
    per_process: usize,
    keys: i64,
    info: f64,
    linger: f64,
) -> (Vec<Event>, Vec<FinalState>) {
    #[derive(Clone)]
    enum P {
        Idle(usize),
        Invoked(usize, u64, Op, Value),
        Applied(usize, u64, Op, Value),
        Done,
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut space = Space::new();
    let mut events = Vec::new();
    let mut procs = vec![P::Idle(0); processes as usize];
    let mut time = 0u64;
    let mut next_op = 0u64;
    let mut uniq = 0i64;
    let mut ev = |kind, process, op_id, f, value, time: &mut u64| {
        *time += 1;
        events.push(Event {
            kind,
            process,
            op_id,
            f,
            value,
            time_ns: *time,
        });
    };
    while procs.iter().any(|p| !matches!(p, P::Done)) {
        let p = rng.gen_range(0..processes);
        let state = procs[p as usize].clone();
        procs[p as usize] = match state {
            P::Done => P::Done,
            P::Idle(n) if n == per_process => P::Done,
            P::Idle(n) => {
                next_op += 1;
                let (f, input) = random_op(&mut rng, keys, &mut uniq, space.next_id());
                ev(EventKind::Invoke, p, next_op, f, input.clone(), &mut time);
                P::Invoked(n, next_op, f, input)
            }
            P::Invoked(n, op, f, input) if matches!(f, Op::In | Op::Rd) && rng.gen_bool(linger) => {
                // A blocking op waiting for a while.
                P::Invoked(n, op, f, input)
            }
            P::Invoked(n, op, f, input) => {
                if rng.gen_bool(info * 0.4) {
                    // Lost in transit: never applied, outcome unknown.
                    ev(
                        EventKind::Info,
                        p,
                        op,
                        f,
                        Value::error("timeout"),
                        &mut time,
                    );
                    P::Idle(n + 1)
                } else {
                    let output = apply(&mut space, f, &input);
                    P::Applied(n, op, f, output)
                }
            }
            P::Applied(n, op, f, output) => {
                if rng.gen_bool(info * 0.6) {
                    // Applied, but the answer was lost.
                    ev(
                        EventKind::Info,
                        p,
                        op,
                        f,
                        Value::error("timeout"),
                        &mut time,
                    );
                } else {
                    ev(EventKind::Ok, p, op, f, output, &mut time);
                }
                P::Idle(n + 1)
            }
        };
    }
    let state: Vec<(TupleId, Tuple)> = space.iter().map(|(id, t)| (id, t.clone())).collect();
    (events, vec![(1, state.clone()), (2, state)])
}

#[test]
fn a_concurrency_heavy_valid_history_passes_quickly() {
    for seed in [1, 2, 3] {
        let (events, f) = simulate(seed, 16, 250, 12, 0.05, 0.9);
        let started = Instant::now();
        let report = check(&events, &f);
        let took = started.elapsed();
        println!("seed {seed}: {} events in {took:?}: {report}", events.len());
        assert_valid(&report);
        assert_eq!(report.ops, 16 * 250);
        assert!(took.as_secs() < 30, "took {took:?}");
    }
}

/// The `("k", KEY)` of a tuple or template text.
fn key_of(text: &str) -> String {
    text.split(',').take(2).collect::<Vec<_>>().join(",")
}

/// Keys on which some take's outcome is unknown (a tuple of such a key may vanish legitimately).
fn keys_with_info_takes(events: &[Event]) -> Vec<String> {
    let infos: Vec<u64> = events
        .iter()
        .filter(|e| e.kind == EventKind::Info && e.f.is_take())
        .map(|e| e.op_id)
        .collect();
    events
        .iter()
        .filter(|e| e.kind == EventKind::Invoke && infos.contains(&e.op_id))
        .map(|e| key_of(e.value.template.as_deref().unwrap()))
        .collect()
}

#[test]
fn simulated_histories_with_a_bug_injected_are_caught() {
    let (events, f) = simulate(7, 8, 200, 12, 0.01, 0.5);
    assert_valid(&check(&events, &f));
    let risky = keys_with_info_takes(&events);
    let safe = |tuple: &str| !risky.contains(&key_of(tuple));

    // An acknowledged inp that took a tuple reports none: the tuple vanishes.
    let mut bad = events.clone();
    let at = bad
        .iter()
        .position(|e| {
            e.kind == EventKind::Ok && e.f == Op::Inp && e.value.tuple.as_deref().is_some_and(&safe)
        })
        .expect("an inp that took something");
    let taken = bad[at].value.id.unwrap();
    bad[at].value = Value::none();
    let report = check(&bad, &f);
    println!("#{taken} taken silently: {report}");
    assert!(report.has(AnomalyKind::NotLinearizable), "{report}");

    // A take returns an id another take already returned.
    let mut bad = events.clone();
    let takes: Vec<usize> = (0..bad.len())
        .filter(|&i| {
            bad[i].kind == EventKind::Ok && bad[i].f.is_take() && bad[i].value.id.is_some()
        })
        .collect();
    let first = bad[takes[0]].value.clone();
    let key = key_of(first.tuple.as_deref().unwrap());
    let victim = *takes[1..]
        .iter()
        .find(|&&i| key_of(bad[i].value.tuple.as_deref().unwrap()) == key)
        .expect("two takes of one key");
    bad[victim].value = first;
    let report = check(&bad, &f);
    assert_caught(&report, AnomalyKind::DoubleTake);

    // An acknowledged tuple disappears from every node's final state.
    let acked: Vec<TupleId> = events
        .iter()
        .filter(|e| e.kind == EventKind::Ok && e.f == Op::Out)
        .filter_map(|e| e.value.id)
        .collect();
    let mut f2 = f.clone();
    let at = f2[0]
        .1
        .iter()
        .position(|(id, t)| acked.contains(id) && safe(&t.to_string()))
        .expect("an acknowledged tuple left at the end");
    let (gone, _) = f2[0].1.remove(at);
    f2[1].1.remove(at);
    let report = check(&events, &f2);
    println!("#{gone} lost: {report}");
    assert_caught(&report, AnomalyKind::LostWrite);

    // An rd_all returns one tuple twice.
    let mut bad = events.clone();
    let at = bad
        .iter()
        .position(|e| {
            e.kind == EventKind::Ok
                && e.f == Op::RdAll
                && e.value.items.as_ref().is_some_and(|i| !i.is_empty())
        })
        .expect("an rd_all with items");
    let item = bad[at].value.items.as_ref().unwrap()[0].clone();
    bad[at].value.items.as_mut().unwrap().push(item);
    assert_caught(&check(&bad, &f), AnomalyKind::NotLinearizable);
}

#[test]
fn the_step_budget_bounds_the_search() {
    // A failing history with a lot of concurrency and info ops: with a tiny budget the search
    // gives up and says so, without reporting an anomaly.
    let mut h = H::default();
    for i in 0..8u64 {
        h.out(i, &format!(r#"("k", 1, {i})"#), i, 100, i + 1);
        h.take_info(10 + i, K1, i, 100);
    }
    h.take(30, Op::Inp, K1, 200, 210, Some((50, r#"("k", 1, 50)"#)));
    let opts = CheckOptions {
        step_budget: 100,
        ..CheckOptions::default()
    };
    let report = check_with(&h.events(), &[], &opts);
    // The phantom is caught by check 3 whatever the budget.
    assert!(report.has(AnomalyKind::Phantom));
    assert!(!report.has(AnomalyKind::NotLinearizable), "{report}");
    assert_eq!(report.unknown.len(), 1, "{report}");
    assert!(
        report.to_string().contains("unknown: partition"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_recorder_works_from_many_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.jsonl");
    let rec = Recorder::to_file(&path).unwrap();
    let space = Arc::new(Mutex::new(Space::new()));
    let mut tasks = Vec::new();
    for p in 0..8u64 {
        let rec = rec.clone();
        let space = space.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(p);
            let mut uniq = p as i64 * 1_000_000;
            for _ in 0..100 {
                let last = space.lock().unwrap().next_id();
                let (f, input) = random_op(&mut rng, 4, &mut uniq, last);
                let op = rec.invoke(p, f, input.clone());
                tokio::task::yield_now().await;
                let output = apply(&mut space.lock().unwrap(), f, &input);
                tokio::task::yield_now().await;
                rec.ok(op, output);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let events = rec.events();
    assert_eq!(events.len(), 1600);
    assert_eq!(read_history(&path).unwrap(), events);
    assert!(rec.write_error().is_none());
    let state: Vec<(TupleId, Tuple)> = space
        .lock()
        .unwrap()
        .iter()
        .map(|(id, t)| (id, t.clone()))
        .collect();
    let report = check(&events, &[(1, state)]);
    assert_valid(&report);
}

/// Makes one `rdp` in the second half of the history return a tuple whose take had completed
/// before the `rdp` was invoked (and that its `after` bound allows): a stale read.
fn inject_stale_read(events: &mut [Event]) -> u64 {
    let mut taken: Vec<(TupleId, u64, String)> = Vec::new();
    for e in events.iter() {
        if e.kind == EventKind::Ok
            && e.f.is_take()
            && let (Some(id), Some(t)) = (e.value.id, &e.value.tuple)
        {
            taken.push((id, e.time_ns, t.clone()));
        }
    }
    let half = events.len() / 2;
    let mut invoked: std::collections::HashMap<u64, (u64, Value)> = Default::default();
    let mut target = None;
    for (i, e) in events.iter().enumerate() {
        if e.kind == EventKind::Invoke {
            invoked.insert(e.op_id, (e.time_ns, e.value.clone()));
            continue;
        }
        if i < half || e.kind != EventKind::Ok || e.f != Op::Rdp || e.value.id.is_none() {
            continue;
        }
        let (t0, input) = &invoked[&e.op_id];
        let key = key_of(input.template.as_deref().unwrap());
        let after = input.after.unwrap_or(0);
        if let Some((y, _, t)) = taken
            .iter()
            .find(|(y, done, t)| *y > after && done < t0 && key_of(t) == key)
        {
            target = Some((i, e.op_id, *y, tup(t)));
            break;
        }
    }
    let (i, op, y, t) = target.expect("a read to make stale");
    events[i].value = Value::found(Some((y, &t)));
    op
}

#[test]
fn info_heavy_histories_pass_and_a_stale_read_in_them_is_caught() {
    for seed in 20..24 {
        // Half the ops end `info`; blocking ops linger.
        let (mut events, f) = simulate(seed, 16, 300, 12, 0.5, 0.95);
        let started = Instant::now();
        let report = check(&events, &f);
        println!("seed {seed}: {:?}: {report}", started.elapsed());
        assert_valid(&report);
        let op = inject_stale_read(&mut events);
        let started = Instant::now();
        let report = check(&events, &f);
        println!("seed {seed}, stale read: {:?}: {report}", started.elapsed());
        assert!(report.unknown.is_empty(), "{report}");
        assert_eq!(report.anomalies.len(), 1, "{report}");
        assert!(
            shows(&report, AnomalyKind::NotLinearizable, &[op]),
            "{report}"
        );
    }
}
