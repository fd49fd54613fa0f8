//! The partition assignors a group leader runs (pure): Kafka's `range` and
//! `cooperative-sticky` (KIP-429 with KIP-54's stickiness), for the one topic a consumer of
//! this crate reads.
//!
//! The leader of a generation computes every member's share from what the JoinGroup answer
//! says of them: whether they subscribe to the topic, and (cooperative) which partitions
//! each says it owns and in which generation. Both orders are Kafka's, so a group mixing
//! this client with the Java client or librdkafka gets the same plan whoever leads.
use std::collections::{BTreeMap, BTreeSet};

use crate::types::Partition;

/// A member of the group as its leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) id: String,
    /// Its `group.instance.id` (static membership), if any.
    pub(crate) instance_id: Option<String>,
    /// Whether it subscribes to the topic.
    pub(crate) subscribed: bool,
    /// The partitions of the topic it says it owns (subscription v1+), and the generation
    /// in which it got them (v2+, or the cooperative-sticky user data; -1: not said).
    pub(crate) owned: Vec<Partition>,
    pub(crate) generation: i32,
}

/// Kafka's range assignor for one topic: members in Kafka's order (static members by
/// instance id first, then the others by member id), each a contiguous run of partitions,
/// the first `partitions % members` one more. Members that do not subscribe get nothing.
pub(crate) fn range(
    members: &[Member],
    partitions: &[Partition],
) -> BTreeMap<String, Vec<Partition>> {
    let mut plan: BTreeMap<String, Vec<Partition>> =
        members.iter().map(|m| (m.id.clone(), Vec::new())).collect();
    let subscribers = ordered(members);
    if subscribers.is_empty() {
        return plan;
    }
    let mut partitions = partitions.to_vec();
    partitions.sort();
    partitions.dedup();
    let each = partitions.len() / subscribers.len();
    let extra = partitions.len() % subscribers.len();
    let mut start = 0;
    for (i, m) in subscribers.into_iter().enumerate() {
        let count = each + usize::from(i < extra);
        plan.insert(m.id.clone(), partitions[start..start + count].to_vec());
        start += count;
    }
    plan
}

/// Kafka's cooperative-sticky assignor for one topic: as balanced as possible (shares
/// differ by at most one), every member keeping as much of what it owns as the balance
/// allows; then, the cooperative rule (KIP-429): a partition that some other member of the
/// group still says it owns is left out of this plan altogether. Its owner, not given it,
/// revokes it and rejoins; in that next rebalance nobody claims it any more, and it goes
/// to its new member. So a partition is never owned by two members at once.
///
/// Claims to one partition by several members are settled by generation: the newest
/// keeps it for stickiness; any other claimant still holds it back for this round (an
/// older claim may be stale, or may be a member that has not stopped yet: waiting one
/// round costs little, two owners would cost a request processed twice).
pub(crate) fn cooperative_sticky(
    members: &[Member],
    partitions: &[Partition],
) -> BTreeMap<String, Vec<Partition>> {
    let mut plan: BTreeMap<String, Vec<Partition>> =
        members.iter().map(|m| (m.id.clone(), Vec::new())).collect();
    let subscribers = ordered(members);
    if subscribers.is_empty() {
        return plan;
    }
    let topic: BTreeSet<Partition> = partitions.iter().copied().collect();

    // Who claims what, and who keeps a claim for stickiness: the claimant of the newest
    // generation, when it is the only one of that generation.
    let mut claimants: BTreeMap<Partition, Vec<(i32, &str)>> = BTreeMap::new();
    for m in members {
        for p in m.owned.iter().filter(|p| topic.contains(p)) {
            claimants
                .entry(*p)
                .or_default()
                .push((m.generation, m.id.as_str()));
        }
    }
    let mut sticky: BTreeMap<&str, Vec<Partition>> = BTreeMap::new();
    for (p, claims) in &claimants {
        let newest = claims.iter().map(|(g, _)| *g).max().unwrap_or(-1);
        let mut at_newest = claims.iter().filter(|(g, _)| *g == newest);
        if let (Some((_, id)), None) = (at_newest.next(), at_newest.next())
            && subscribers.iter().any(|m| m.id == *id)
        {
            sticky.entry(id).or_default().push(*p);
        }
    }

    // Quotas: every member gets `min` or `min + 1`; `extra` of them the larger.
    let n = subscribers.len();
    let min = topic.len() / n;
    let mut extra = topic.len() % n;
    let mut share: BTreeMap<&str, Vec<Partition>> = BTreeMap::new();
    // Those who own the most keep first, so the larger quotas go where they move least.
    let mut by_owned: Vec<&Member> = subscribers.clone();
    by_owned.sort_by_key(|m| std::cmp::Reverse(sticky.get(m.id.as_str()).map_or(0, Vec::len)));
    for m in by_owned {
        let mut own = sticky.remove(m.id.as_str()).unwrap_or_default();
        own.sort();
        let cap = if own.len() > min && extra > 0 {
            extra -= 1;
            min + 1
        } else {
            min
        };
        own.truncate(cap);
        share.insert(m.id.as_str(), own);
    }
    let taken: BTreeSet<Partition> = share.values().flatten().copied().collect();
    let mut free = topic.difference(&taken).copied();
    // Everyone up to the smaller quota, then the larger quotas left to those at it.
    for m in &subscribers {
        let mine = share.entry(m.id.as_str()).or_default();
        while mine.len() < min {
            match free.next() {
                Some(p) => mine.push(p),
                None => break,
            }
        }
    }
    for m in &subscribers {
        if extra == 0 {
            break;
        }
        let mine = share.entry(m.id.as_str()).or_default();
        if mine.len() == min
            && let Some(p) = free.next()
        {
            mine.push(p);
            extra -= 1;
        }
    }
    debug_assert!(free.next().is_none(), "every partition has a member");

    // The cooperative rule: nothing goes to a member while another still claims it.
    for (id, mut mine) in share {
        mine.retain(|p| {
            claimants
                .get(p)
                .is_none_or(|claims| claims.iter().all(|(_, owner)| *owner == id))
        });
        mine.sort();
        plan.insert(id.to_owned(), mine);
    }
    plan
}

/// The subscribers in Kafka's member order: static members (by instance id) before dynamic
/// ones (by member id), as the Java client's `MemberInfo` orders them, so that a static
/// member's range does not depend on the member id it got this time.
fn ordered(members: &[Member]) -> Vec<&Member> {
    let mut out: Vec<&Member> = members.iter().filter(|m| m.subscribed).collect();
    out.sort_by(|a, b| match (&a.instance_id, &b.instance_id) {
        (Some(x), Some(y)) => x.cmp(y).then_with(|| a.id.cmp(&b.id)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.id.cmp(&b.id),
    });
    out.dedup_by(|a, b| a.id == b.id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn parts(ids: &[i32]) -> Vec<Partition> {
        ids.iter().map(|i| Partition(*i)).collect()
    }

    fn member(id: &str, owned: &[i32], generation: i32) -> Member {
        Member {
            id: id.into(),
            instance_id: None,
            subscribed: true,
            owned: parts(owned),
            generation,
        }
    }

    #[test]
    fn range_splits_without_overlap_and_gives_nothing_to_extra_members() {
        let members = [member("b", &[], -1), member("a", &[], -1)];
        let plan = range(&members, &parts(&[0, 1, 2]));
        assert_eq!(plan["a"], parts(&[0, 1]));
        assert_eq!(plan["b"], parts(&[2]));
        let members: Vec<Member> = (0..4).map(|i| member(&format!("m{i}"), &[], -1)).collect();
        let plan = range(&members, &parts(&[0, 1]));
        assert_eq!(plan.values().map(Vec::len).sum::<usize>(), 2);
        assert_eq!(plan["m3"], parts(&[]));
    }

    #[test]
    fn range_orders_static_members_by_instance_id_before_dynamic_ones() {
        let mut z = member("a-dynamic", &[], -1);
        z.instance_id = None;
        let mut x = member("zzz-1", &[], -1);
        x.instance_id = Some("host-1".into());
        let mut y = member("aaa-2", &[], -1);
        y.instance_id = Some("host-2".into());
        let plan = range(&[z, y, x], &parts(&[0, 1, 2]));
        assert_eq!(plan["zzz-1"], parts(&[0]), "host-1 first");
        assert_eq!(plan["aaa-2"], parts(&[1]));
        assert_eq!(plan["a-dynamic"], parts(&[2]), "dynamic members last");
    }

    #[test]
    fn members_that_do_not_subscribe_get_nothing() {
        let mut other = member("other", &[], -1);
        other.subscribed = false;
        for plan in [
            range(&[other.clone(), member("m", &[], -1)], &parts(&[0, 1])),
            cooperative_sticky(&[other.clone(), member("m", &[], -1)], &parts(&[0, 1])),
        ] {
            assert_eq!(plan["other"], parts(&[]));
            assert_eq!(plan["m"], parts(&[0, 1]));
        }
    }

    #[test]
    fn a_first_cooperative_assignment_is_balanced() {
        let members = [
            member("a", &[], -1),
            member("b", &[], -1),
            member("c", &[], -1),
        ];
        let plan = cooperative_sticky(&members, &parts(&[0, 1, 2, 3, 4, 5]));
        assert_eq!(plan["a"], parts(&[0, 1]));
        assert_eq!(plan["b"], parts(&[2, 3]));
        assert_eq!(plan["c"], parts(&[4, 5]));
    }

    /// The scenario: a fourth member joins three that own two partitions each.
    /// Two keep theirs, one gives one up (and keeps the other), and the newcomer gets the
    /// freed partition only in the second round, once nobody claims it.
    #[test]
    fn a_member_joining_gets_a_partition_only_once_its_owner_gave_it_up() {
        let all = parts(&[0, 1, 2, 3, 4, 5]);
        let members = [
            member("a", &[0, 1], 3),
            member("b", &[2, 3], 3),
            member("c", &[4, 5], 3),
            member("d", &[], -1),
        ];
        let first = cooperative_sticky(&members, &all);
        assert_eq!(first["a"], parts(&[0, 1]));
        assert_eq!(first["b"], parts(&[2, 3]));
        assert_eq!(first["c"], parts(&[4]), "c gives 5 up");
        assert_eq!(first["d"], parts(&[]), "5 is still c's in this round");
        let members = [
            member("a", &[0, 1], 4),
            member("b", &[2, 3], 4),
            member("c", &[4], 4),
            member("d", &[], 4),
        ];
        let second = cooperative_sticky(&members, &all);
        assert_eq!(second["d"], parts(&[5]));
        assert_eq!(second["c"], parts(&[4]));
        assert_eq!(second["a"], parts(&[0, 1]));
    }

    #[test]
    fn a_partition_claimed_by_two_members_goes_to_nobody_until_one_lets_go() {
        let all = parts(&[0, 1]);
        // A stale claim (older generation) and a current one: the current owner keeps it.
        let plan = cooperative_sticky(&[member("a", &[0], 5), member("b", &[0, 1], 4)], &all);
        assert_eq!(plan["a"], parts(&[]), "0 is still claimed by b");
        assert_eq!(plan["b"], parts(&[1]), "b gives 0 up to a");
        // Two claims of the same generation: neither keeps it this round.
        let plan = cooperative_sticky(&[member("a", &[0], 5), member("b", &[0], 5)], &all);
        assert!(!plan["a"].contains(&Partition(0)) && !plan["b"].contains(&Partition(0)));
    }

    #[test]
    fn a_member_that_left_leaves_its_partitions_free_at_once() {
        // "c" left: nobody in the group claims 4 and 5 any more.
        let plan = cooperative_sticky(
            &[member("a", &[0, 1], 3), member("b", &[2, 3], 3)],
            &parts(&[0, 1, 2, 3, 4, 5]),
        );
        assert_eq!(plan["a"], parts(&[0, 1, 4]));
        assert_eq!(plan["b"], parts(&[2, 3, 5]));
    }

    /// Random groups going through joins, leaves and added partitions, each member doing
    /// what KIP-429 says with its plan (keep what it is given, give up the rest, rejoin
    /// when it gave something up): no partition is ever assigned to one member while
    /// another still owns it, every member that keeps within its quota keeps all it owns,
    /// and the group is balanced and complete within two rounds of every change.
    #[test]
    fn cooperative_plans_never_give_an_owned_partition_away_and_settle_in_two_rounds() {
        let mut rng = StdRng::seed_from_u64(0x429);
        for case in 0..400 {
            let mut count = rng.random_range(1..=12);
            let mut owned: BTreeMap<String, Vec<Partition>> = BTreeMap::new();
            let mut next = 0;
            let mut generation = 0;
            for _ in 0..rng.random_range(1..=5) {
                owned.insert(format!("m{next:02}"), Vec::new());
                next += 1;
            }
            for change in 0..6 {
                match rng.random_range(0..4) {
                    0 => {
                        owned.insert(format!("m{next:02}"), Vec::new());
                        next += 1;
                    }
                    1 if owned.len() > 1 => {
                        let k = owned.keys().nth(rng.random_range(0..owned.len())).cloned();
                        owned.remove(&k.unwrap());
                    }
                    2 => count += rng.random_range(1..=4),
                    _ => {}
                }
                let all: Vec<Partition> = (0..count).map(Partition).collect();
                let mut settled = false;
                for round in 0..3 {
                    generation += 1;
                    let members: Vec<Member> = owned
                        .iter()
                        .map(|(id, o)| Member {
                            id: id.clone(),
                            instance_id: None,
                            subscribed: true,
                            owned: o.clone(),
                            generation: generation - 1,
                        })
                        .collect();
                    let plan = cooperative_sticky(&members, &all);
                    let ctx =
                        format!("case {case} change {change} round {round}: {owned:?} -> {plan:?}");
                    let quota_max = count as usize / owned.len() + 1;
                    for (id, mine) in &plan {
                        for p in mine {
                            for (other, theirs) in &owned {
                                assert!(
                                    other == id || !theirs.contains(p),
                                    "{p} given to {id} while {other} owns it; {ctx}"
                                );
                            }
                        }
                        let had = &owned[id];
                        if had.len() < quota_max - 1 {
                            assert!(
                                had.iter().all(|p| mine.contains(p)),
                                "{id} lost some of {had:?}; {ctx}"
                            );
                        }
                    }
                    let given: Vec<Partition> = plan.values().flatten().copied().collect();
                    let distinct: BTreeSet<Partition> = given.iter().copied().collect();
                    assert_eq!(
                        given.len(),
                        distinct.len(),
                        "a partition given twice; {ctx}"
                    );
                    let sizes: Vec<usize> = plan.values().map(Vec::len).collect();
                    let balanced = sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1;
                    let changed = plan.iter().any(|(id, mine)| &owned[id] != mine);
                    // Each member takes its plan: gives up what it lost (and would rejoin).
                    for (id, mine) in plan {
                        owned.insert(id, mine);
                    }
                    if !changed && distinct.len() == count as usize && balanced {
                        settled = true;
                        break;
                    }
                }
                assert!(
                    settled,
                    "case {case} change {change}: not settled in 2 rounds: {owned:?}"
                );
            }
        }
    }
}
