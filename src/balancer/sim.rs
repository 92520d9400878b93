//! Test support: a discrete-event simulation, in virtual time, of an edge isolate sending Poisson
//! arrivals through the balancer to modelled GPU origins, for end-to-end checks of routing, health
//! and retries with deterministic seeds.
//!
//! Model. Each origin has `slots` parallel servers (the batch a GPU serves at once) and a FIFO
//! queue in front; service times are exponential with the origin's mean (so a live origin is an
//! M/M/c queue). A failing origin answers 503 at the end of service with probability `fail_rate`
//! (the GPU time is wasted). A dead origin accepts the connection and never answers, the worst
//! case, which only the per-try timeout reveals. The client side drives the balancer exactly as the
//! glue does (begin, pick, on_start, on_first_byte/on_success or on_failure, should_retry).
//!
//! Load is given as a fraction of the live origins' raw capacity, Σ slots / mean service time:
//! production GPU fleets run at roughly 60–70 % so that bursts do not queue for long, and that is
//! where routing matters (at 10 % anything works, at 100 % nothing does).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use super::{
    Balancer, FailureKind, Kind, OriginConfig, OriginId, Plan, Policy, RetryDecision, Rng, Routing,
    Target,
};

#[derive(Debug, Clone)]
pub struct OriginModel {
    /// Mean service time, seconds.
    pub mean_service: f64,
    pub slots: usize,
    pub fail_rate: f64,
    pub dead: bool,
}

impl OriginModel {
    pub fn healthy(mean_service: f64) -> OriginModel {
        OriginModel {
            mean_service,
            slots: 8,
            fail_rate: 0.0,
            dead: false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Router {
    Balancer(Routing),
    /// Knows every origin's true mean service time, failure rate, liveness and queue, and sends
    /// each attempt where its expected time to a successful answer is least.
    Oracle,
}

pub struct Scenario {
    pub origins: Vec<OriginModel>,
    /// Offered load as a fraction of the live origins' capacity.
    pub load: f64,
    pub seconds: f64,
    pub seed: u64,
    pub router: Router,
}

#[derive(Debug)]
pub struct Report {
    pub requests: u64,
    pub succeeded: u64,
    /// Client-visible failures: the balancer gave up, or had no origin.
    pub failed: u64,
    pub retries: u64,
    /// Seconds, over successful requests, from arrival to first byte.
    pub mean_latency: f64,
    pub p99_latency: f64,
    pub attempts_per_origin: Vec<u64>,
}

const TARGET: Target<'static> = Target {
    kind: Kind::Chat,
    model: "m",
    region: None,
    affinity_key: None,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrival,
    Done { attempt: usize },
    Timeout { attempt: usize },
    Retry { request: usize },
}

struct Attempt {
    request: usize,
    origin: usize,
    started: f64,
    live: bool,
}

struct OriginRun {
    busy: usize,
    queue: VecDeque<usize>,
}

struct Sim {
    models: Vec<OriginModel>,
    router: Router,
    balancer: Balancer,
    rng: Rng,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    runs: Vec<OriginRun>,
    attempts: Vec<Attempt>,
    requests: Vec<(f64, Plan)>,
    latencies: Vec<f64>,
    failed: u64,
    retries: u64,
}

fn at(now: f64) -> Duration {
    Duration::from_secs_f64(now)
}

impl Sim {
    fn schedule(&mut self, time: f64, event: Event) {
        self.seq += 1;
        // Nanosecond ticks keep the heap ordering exact; seq breaks ties in insertion order.
        self.events
            .push(Reverse(((time * 1e9) as u64, self.seq, event)));
    }

    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.rng.next_f64()).ln()
    }

    /// Like the balancer, a retry goes to an origin this request has not tried when one is live.
    fn oracle_pick(&self, plan: &Plan) -> Option<usize> {
        let expected = |i: usize| {
            let m = &self.models[i];
            let run = &self.runs[i];
            let queued = run.queue.iter().filter(|&&a| self.attempts[a].live).count();
            let ahead = (run.busy + queued + 1).saturating_sub(m.slots) as f64;
            (m.mean_service * (1.0 + ahead / m.slots as f64)) / (1.0 - m.fail_rate)
        };
        let live = |i: &usize| !self.models[*i].dead;
        let fresh = |i: &usize| !plan.tried_origin(OriginId(*i));
        let best = |pool: Vec<usize>| {
            pool.into_iter()
                .min_by(|&a, &b| expected(a).total_cmp(&expected(b)))
        };
        best((0..self.models.len()).filter(live).filter(fresh).collect())
            .or_else(|| best((0..self.models.len()).filter(live).collect()))
    }

    fn dispatch(&mut self, request: usize, now: f64) {
        let t = at(now);
        let picked = match self.router {
            Router::Oracle => self.oracle_pick(&self.requests[request].1).map(OriginId),
            Router::Balancer(_) => self.balancer.pick(&TARGET, &self.requests[request].1, t),
        };
        let (Some(id), Some(timeout)) = (picked, self.requests[request].1.try_timeout(t)) else {
            self.failed += 1;
            return;
        };
        self.balancer.on_start(id, &mut self.requests[request].1, t);
        let attempt = self.attempts.len();
        self.attempts.push(Attempt {
            request,
            origin: id.0,
            started: now,
            live: true,
        });
        self.schedule(now + timeout.as_secs_f64(), Event::Timeout { attempt });
        let origin = id.0;
        if self.models[origin].dead {
            return;
        }
        if self.runs[origin].busy < self.models[origin].slots {
            self.serve(origin, attempt, now);
        } else {
            self.runs[origin].queue.push_back(attempt);
        }
    }

    fn serve(&mut self, origin: usize, attempt: usize, now: f64) {
        self.runs[origin].busy += 1;
        let service = self.exp(self.models[origin].mean_service);
        self.schedule(now + service, Event::Done { attempt });
    }

    fn done(&mut self, attempt: usize, now: f64) {
        let origin = self.attempts[attempt].origin;
        self.runs[origin].busy -= 1;
        // Attempts that timed out while queued are skipped: the client has hung up.
        while let Some(next) = self.runs[origin].queue.pop_front() {
            if self.attempts[next].live {
                self.serve(origin, next, now);
                break;
            }
        }
        if !self.attempts[attempt].live {
            return;
        }
        self.attempts[attempt].live = false;
        if self.rng.next_f64() < self.models[origin].fail_rate {
            return self.fail(attempt, FailureKind::ServerError { status: 503 }, now);
        }
        let a = &self.attempts[attempt];
        let (request, latency) = (a.request, now - a.started);
        let t = at(now);
        self.balancer.on_first_byte(
            OriginId(origin),
            at(latency),
            &mut self.requests[request].1,
            t,
        );
        self.balancer.on_success(OriginId(origin), t);
        self.latencies.push(now - self.requests[request].0);
    }

    fn fail(&mut self, attempt: usize, kind: FailureKind, now: f64) {
        let (request, origin) = (
            self.attempts[attempt].request,
            self.attempts[attempt].origin,
        );
        let t = at(now);
        self.balancer.on_failure(OriginId(origin), kind, t);
        match self
            .balancer
            .should_retry(&self.requests[request].1, kind, t)
        {
            RetryDecision::Retry { after } => {
                self.retries += 1;
                self.schedule(now + after.as_secs_f64(), Event::Retry { request });
            }
            RetryDecision::GiveUp(_) => self.failed += 1,
        }
    }
}

pub fn run(scenario: &Scenario) -> Report {
    let configs = (0..scenario.origins.len())
        .map(|i| OriginConfig {
            name: format!("gpu-{i}"),
            url: format!("http://127.0.0.1:{}", 9000 + i),
            models: vec!["m".into()],
            region: None,
            weight: 1.0,
            max_inflight: 64,
            kind: Kind::Chat,
            api_key_secret: None,
        })
        .collect();
    let routing = match scenario.router {
        Router::Balancer(routing) => routing,
        Router::Oracle => Routing::RoundRobin,
    };
    let capacity: f64 = scenario
        .origins
        .iter()
        .filter(|o| !o.dead)
        .map(|o| o.slots as f64 / o.mean_service)
        .sum();
    let rate = scenario.load * capacity;
    let mut sim = Sim {
        models: scenario.origins.clone(),
        router: scenario.router,
        balancer: Balancer::new(
            configs,
            routing,
            Vec::new(),
            Policy::default(),
            scenario.seed,
        ),
        rng: Rng::new(scenario.seed ^ 0x5EED),
        events: BinaryHeap::new(),
        seq: 0,
        runs: scenario
            .origins
            .iter()
            .map(|_| OriginRun {
                busy: 0,
                queue: VecDeque::new(),
            })
            .collect(),
        attempts: Vec::new(),
        requests: Vec::new(),
        latencies: Vec::new(),
        failed: 0,
        retries: 0,
    };
    sim.schedule(0.0, Event::Arrival);
    while let Some(Reverse((tick, _, event))) = sim.events.pop() {
        let now = tick as f64 / 1e9;
        match event {
            Event::Arrival => {
                let plan = sim.balancer.begin(at(now));
                sim.requests.push((now, plan));
                sim.dispatch(sim.requests.len() - 1, now);
                let next = now + sim.exp(1.0 / rate);
                if next < scenario.seconds {
                    sim.schedule(next, Event::Arrival);
                }
            }
            Event::Done { attempt } => sim.done(attempt, now),
            Event::Timeout { attempt } => {
                if sim.attempts[attempt].live {
                    sim.attempts[attempt].live = false;
                    sim.fail(attempt, FailureKind::Timeout, now);
                }
            }
            Event::Retry { request } => sim.dispatch(request, now),
        }
    }
    let mut sorted = sim.latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let mut attempts_per_origin = vec![0; scenario.origins.len()];
    for a in &sim.attempts {
        attempts_per_origin[a.origin] += 1;
    }
    Report {
        requests: sim.requests.len() as u64,
        succeeded: sim.latencies.len() as u64,
        failed: sim.failed,
        retries: sim.retries,
        mean_latency: sorted.iter().sum::<f64>() / sorted.len().max(1) as f64,
        p99_latency: sorted.get(sorted.len() * 99 / 100).copied().unwrap_or(0.0),
        attempts_per_origin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECONDS: f64 = 300.0;
    const LOAD: f64 = 0.65;

    /// Two good origins (100 ms mean), one 5× slower, one failing 30 % of requests.
    fn mixed_fleet() -> Vec<OriginModel> {
        vec![
            OriginModel::healthy(0.1),
            OriginModel::healthy(0.1),
            OriginModel::healthy(0.5),
            OriginModel {
                fail_rate: 0.3,
                ..OriginModel::healthy(0.1)
            },
        ]
    }

    fn budget_bound(r: &Report) -> f64 {
        let p = Policy::default();
        p.retry_ratio * r.requests as f64 + p.retry_floor_per_sec * SECONDS + p.retry_burst
    }

    fn simulate(origins: Vec<OriginModel>, router: Router, seed: u64) -> Report {
        let report = run(&Scenario {
            origins,
            load: LOAD,
            seconds: SECONDS,
            seed,
            router,
        });
        println!(
            "{router:?}: mean {:.1} ms, p99 {:.1} ms, {} requests, {} failed, {} retries, attempts per origin {:?}",
            report.mean_latency * 1e3,
            report.p99_latency * 1e3,
            report.requests,
            report.failed,
            report.retries,
            report.attempts_per_origin
        );
        assert!(
            report.retries as f64 <= budget_bound(&report),
            "retries beyond budget: {report:?}"
        );
        report
    }

    #[test]
    fn p2c_ewma_is_near_the_oracle_and_far_better_than_round_robin() {
        for seed in [1, 2] {
            let oracle = simulate(mixed_fleet(), Router::Oracle, seed);
            let p2c = simulate(mixed_fleet(), Router::Balancer(Routing::P2cEwma), seed);
            let rr = simulate(mixed_fleet(), Router::Balancer(Routing::RoundRobin), seed);
            for other in [Routing::LeastInflight, Routing::Weighted] {
                simulate(mixed_fleet(), Router::Balancer(other), seed);
            }
            assert_eq!(p2c.failed, 0, "{p2c:?}");
            assert!(
                p2c.mean_latency <= 1.25 * oracle.mean_latency,
                "p2c {p2c:?} vs oracle {oracle:?}"
            );
            assert!(
                rr.mean_latency >= 2.0 * p2c.mean_latency,
                "round-robin {rr:?} vs p2c {p2c:?}"
            );
        }
    }

    #[test]
    fn the_retry_budget_caps_retries_in_a_brownout() {
        // Every origin fails 60 % of requests: unbudgeted retries would add 1.5 attempts per request.
        let fleet = vec![
            OriginModel {
                fail_rate: 0.6,
                ..OriginModel::healthy(0.1)
            };
            4
        ];
        let report = simulate(fleet, Router::Balancer(Routing::P2cEwma), 4);
        assert!(
            report.failed > 0,
            "the budget must have refused some retries: {report:?}"
        );
        assert!(
            report.retries as f64 >= 0.15 * report.requests as f64,
            "the budget was not used: {report:?}"
        );
    }

    #[test]
    fn a_dead_origin_causes_no_client_visible_failures() {
        let fleet = vec![
            OriginModel::healthy(0.1),
            OriginModel::healthy(0.1),
            OriginModel::healthy(0.5),
            OriginModel {
                dead: true,
                ..OriginModel::healthy(0.1)
            },
        ];
        for routing in [Routing::P2cEwma, Routing::LeastInflight] {
            let report = simulate(fleet.clone(), Router::Balancer(routing), 3);
            assert_eq!(report.failed, 0, "{routing:?}: {report:?}");
            assert!(
                report.retries > 0,
                "the dead origin must have been tried and retried"
            );
            assert_eq!(report.succeeded, report.requests);
        }
    }
}
