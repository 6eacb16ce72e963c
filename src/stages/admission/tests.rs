//! Admission queue tests on paused tokio time: wake-ups, deadlines, eviction, early shedding.

use super::*;
use std::sync::Arc;

/// Any slot: the waiting mechanics do not depend on it.
const ANY: SlotRule = SlotRule {
    share: 1.0,
    cost: None,
    work_cap: Duration::from_millis(50),
    ceiling: 64,
};

fn adm() -> Arc<Admission> {
    Arc::new(Admission::new(SheddingConfig {
        max_queue: 2,
        ..SheddingConfig::default()
    }))
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_woken_by_a_release() {
    let a = adm();
    let a2 = a.clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    let w = tokio::spawn(async move {
        a2.wait(Priority::Normal, ANY, Duration::from_secs(5), deadline)
            .await
    });
    tokio::task::yield_now().await;
    assert_eq!(a.waiting(), 1);
    a.on_release(|_| true);
    assert!(matches!(w.await.unwrap(), Wait::Woken(_)));
    assert_eq!(a.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_shed_at_its_deadline_and_leaves_the_queue() {
    let a = adm();
    let budget = Duration::from_millis(50);
    // Real Instant deadline in the past relative to paused tokio time is not needed:
    // the tokio timer fires when paused time advances past it.
    let w = a.wait(Priority::Normal, ANY, budget, Instant::now() + budget);
    assert_eq!(w.await, Wait::Shed(ShedReason::QueueTimeout));
    assert_eq!(a.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_evicts_lower_priority_or_sheds_the_newcomer() {
    let a = adm();
    let far = Instant::now() + Duration::from_secs(60);
    let budget = Duration::from_secs(60);
    let mut low = vec![];
    for _ in 0..2 {
        let a2 = a.clone();
        low.push(tokio::spawn(async move {
            a2.wait(Priority::Sheddable, ANY, budget, far).await
        }));
    }
    tokio::task::yield_now().await;
    assert_eq!(a.waiting(), 2);
    // Another sheddable request: nobody below it, shed.
    assert_eq!(
        a.wait(Priority::Sheddable, ANY, budget, far).await,
        Wait::Shed(ShedReason::QueueFull)
    );
    // A critical one takes the place of the newest sheddable.
    let a2 = a.clone();
    let crit = tokio::spawn(async move { a2.wait(Priority::Critical, ANY, budget, far).await });
    tokio::task::yield_now().await;
    assert_eq!(
        low.pop().unwrap().await.unwrap(),
        Wait::Shed(ShedReason::Evicted)
    );
    // The critical request is served first.
    a.on_release(|_| true);
    assert!(matches!(crit.await.unwrap(), Wait::Woken(_)));
    a.on_release(|_| true);
    assert!(matches!(low.pop().unwrap().await.unwrap(), Wait::Woken(_)));
}

#[tokio::test(start_paused = true)]
async fn a_backlog_that_cannot_drain_in_time_is_shed_at_once() {
    let a = Arc::new(Admission::new(SheddingConfig {
        target_queue_delay: Duration::from_secs(60),
        ..SheddingConfig::default()
    }));
    a.set_drain_rate(100.0); // 10 ms per request
    let far = Instant::now() + Duration::from_secs(60);
    let mut waiters = vec![];
    for _ in 0..10 {
        let a2 = a.clone();
        waiters.push(tokio::spawn(async move {
            a2.wait(Priority::Normal, ANY, Duration::from_secs(60), far)
                .await
        }));
    }
    tokio::task::yield_now().await;
    // 10 ahead at 100/s = 100 ms > a 50 ms budget.
    let t = Instant::now();
    let r = a
        .wait(Priority::Normal, ANY, Duration::from_millis(50), far)
        .await;
    assert_eq!(r, Wait::Shed(ShedReason::DeadlineUnreachable));
    assert!(t.elapsed() < Duration::from_millis(5));
    // A critical request has nobody ahead of it and may wait.
    assert_eq!(a.expected_wait(a.waiting()), Duration::from_millis(100));
    assert_eq!(a.retry_after_secs(), 1);
    for w in waiters {
        w.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn the_queue_holds_no_more_than_its_target_delay_whatever_the_budget() {
    let a = Arc::new(Admission::new(SheddingConfig::default())); // target 50 ms
    a.set_drain_rate(100.0); // 10 ms per request
    let far = Instant::now() + Duration::from_secs(60);
    let mut queued = vec![];
    loop {
        let a2 = a.clone();
        let w = tokio::spawn(async move {
            a2.wait(Priority::Critical, ANY, Duration::from_secs(60), far)
                .await
        });
        tokio::task::yield_now().await;
        if w.is_finished() {
            assert_eq!(
                w.await.unwrap(),
                Wait::Shed(ShedReason::DeadlineUnreachable)
            );
            break;
        }
        queued.push(w);
        assert!(queued.len() < 10, "the queue grew past its target");
    }
    // A newcomer with 4 ahead expects 40 ms (x1.25 = 50, at the target): admitted; with
    // 5 ahead, 62.5 ms: shed on arrival.
    assert_eq!(queued.len(), 5);
    for w in queued {
        w.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn a_lower_class_queues_behind_a_higher_one_and_is_served_after_it() {
    // No standing queue (a passing burst): the normal request waits its turn instead of
    // being shed for priority (see `arrival` for the sustained-overload case).
    let a = Arc::new(Admission::new(SheddingConfig::default()));
    let far = Instant::now() + Duration::from_secs(60);
    let a2 = a.clone();
    let crit = tokio::spawn(async move {
        a2.wait(Priority::Critical, ANY, Duration::from_secs(60), far)
            .await
    });
    tokio::task::yield_now().await;
    let a3 = a.clone();
    let normal = tokio::spawn(async move {
        a3.wait(Priority::Normal, ANY, Duration::from_secs(60), far)
            .await
    });
    tokio::task::yield_now().await;
    assert_eq!(a.waiting(), 2);
    a.on_release(|_| true);
    assert!(matches!(crit.await.unwrap(), Wait::Woken(_)));
    assert!(!normal.is_finished());
    a.on_release(|_| true);
    assert!(matches!(normal.await.unwrap(), Wait::Woken(_)));
}

#[tokio::test(start_paused = true)]
async fn a_freed_slot_wakes_the_waiter_it_fits_and_holds_newcomers_back_until_taken() {
    let a = Arc::new(Admission::new(SheddingConfig::default()));
    let far = Instant::now() + Duration::from_secs(60);
    let dear = SlotRule {
        cost: Some(Duration::from_millis(40)),
        ..ANY
    };
    let (a2, a3) = (a.clone(), a.clone());
    let crit = tokio::spawn(async move {
        a2.wait(Priority::Critical, dear, Duration::from_secs(60), far)
            .await
    });
    tokio::task::yield_now().await;
    let normal = tokio::spawn(async move {
        a3.wait(Priority::Normal, ANY, Duration::from_secs(60), far)
            .await
    });
    tokio::task::yield_now().await;
    assert_eq!(a.waiting(), 2);
    // A slot with room for 10 ms of work: the dear critical request cannot use it, the
    // normal one can.
    a.on_release(|r| r.cost.is_none_or(|c| c <= Duration::from_millis(10)));
    let token = match normal.await.unwrap() {
        Wait::Woken(t) => t,
        other => panic!("{other:?}"),
    };
    assert!(!crit.is_finished());
    // Until the woken request has taken its slot, newcomers queue behind it.
    assert!(a.must_queue());
    drop(token);
    assert_eq!(a.waiting(), 1);
    // The wake chain goes on only when nobody is on the way to a slot.
    a.wake_one_if_idle(|_| true);
    assert!(matches!(crit.await.unwrap(), Wait::Woken(_)));
    assert!(!a.must_queue());
}
