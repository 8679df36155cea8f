//! Webhook events that no domain operation records (`Write::Hook`, `FireHookTimers`,
//! `ReportOnline`): written by either engine like any write, in the transaction of the
//! turn or batch that runs them. What each event says is `webhook`'s business.

use crate::model::UserId;
use crate::store::StoreResult;
use crate::tx::Tx;
use crate::webhook::Hook;

/// Stores a `Hook`, in the transaction of `tx`.
pub fn store(tx: &mut Tx<'_>, hook: &Hook) -> StoreResult<()> {
    let Some(hooks) = tx.hooks else { return Ok(()) };
    if let Some((user, online)) = &hook.online
        && !tx.store.set_hook_online(user, *online)?
    {
        return Ok(());
    }
    if hooks.wants(hook.kind) {
        tx.store.insert_hook(hook.kind.name(), &hook.stream.key(), None, &hook.data, tx.now)?;
    }
    Ok(())
}

/// The users reported online become `online`: whoever is reported online and is not
/// goes offline, whoever is and was not reported comes online. At start-up with
/// nobody (a crash left users online), and on a cluster's node when it starts
/// delivering (the cluster's view then; see `App::sweep_hooks`).
pub fn report_online(tx: &mut Tx<'_>, online: &[(UserId, String)]) -> StoreResult<usize> {
    let reported = tx.store.hook_online_users()?;
    let now: std::collections::HashMap<&UserId, &str> = online.iter().map(|(u, n)| (u, n.as_str())).collect();
    let mut changed = 0;
    for user in reported.iter().filter(|user| !now.contains_key(user)) {
        store(tx, &crate::webhook::presence_hook(user, None, false))?;
        changed += 1;
    }
    let reported: std::collections::HashSet<&UserId> = reported.iter().collect();
    for (user, name) in online.iter().filter(|(user, _)| !reported.contains(user)) {
        store(tx, &crate::webhook::presence_hook(user, Some(name), true))?;
        changed += 1;
    }
    Ok(changed)
}

/// The unread timers due now fire: `message.unread` and `notification.unread` for
/// whoever has still not read what each looks at (a bounded number per call).
pub fn fire_timers(tx: &mut Tx<'_>) -> StoreResult<usize> {
    /// Timers looked at per call at most (twice a second).
    const TIMERS_PER_SWEEP: usize = 2000;
    let Some(hooks) = tx.hooks else { return Ok(0) };
    let fired = tx.store.take_due_hook_timers(tx.now, TIMERS_PER_SWEEP)?;
    for timer in &fired {
        for (kind, data) in crate::webhook::unread(timer).into_iter().filter(|(kind, _)| hooks.wants(*kind)) {
            tx.store.insert_hook(kind.name(), &timer.stream, timer.seq, &data, tx.now)?;
        }
    }
    Ok(fired.len())
}
