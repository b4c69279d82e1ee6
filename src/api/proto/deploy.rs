//! The wire form of a deploy's progress and result (`deploy`, `rollback`; docs/api.md "deploy,
//! rollback, history"), made from the supervisor's domain values (`supervisor::deploy`).

use serde::{Deserialize, Serialize};

use crate::supervisor::deploy::{DeployProgress, DeployReport, Outcome, Step, Strategy};

impl From<DeployProgress> for DeployStep {
    fn from(p: DeployProgress) -> Self {
        let kind = match p.step {
            Step::Deploying {
                release,
                previous,
                strategy,
            } => DeployStepKind::Deploying {
                release,
                previous,
                strategy: match strategy {
                    Strategy::PortSwap => DeployStrategy::PortSwap,
                    Strategy::Restart => DeployStrategy::Restart,
                },
            },
            Step::Started {
                release,
                pid,
                port,
                slot,
            } => DeployStepKind::Started {
                release,
                pid,
                port,
                slot,
            },
            Step::Healthy { release, after_ms } => DeployStepKind::Healthy { release, after_ms },
            Step::Switched { release, port } => DeployStepKind::Switched { release, port },
            Step::Watching { release, for_ms } => DeployStepKind::Watching { release, for_ms },
            Step::OldStopped { release } => DeployStepKind::OldStopped { release },
        };
        DeployStep {
            deploy_id: p.deploy_id,
            elapsed_ms: p.elapsed_ms,
            kind,
        }
    }
}

impl From<DeployReport> for DeployResult {
    fn from(r: DeployReport) -> Self {
        DeployResult {
            deploy_id: r.deploy_id,
            result: match r.result {
                Outcome::Succeeded => DeployOutcome::Succeeded,
                Outcome::Failed => DeployOutcome::Failed,
                Outcome::RolledBack => DeployOutcome::RolledBack,
            },
            release: r.release,
            previous: r.previous,
            active: r.active,
            duration_ms: r.duration_ms,
            reason: r.reason,
            rollback: r.rollback,
        }
    }
}

/// One step of a deploy, sent as it happens (a `"done": false` line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployStep {
    pub deploy_id: String,
    /// Since the deploy was accepted.
    pub elapsed_ms: u64,
    /// `step` and the fields of that step.
    #[serde(flatten)]
    pub kind: DeployStepKind,
}

/// What a [`DeployStep`] reports (*contract*: the `step` names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum DeployStepKind {
    /// The deploy began.
    Deploying {
        release: String,
        previous: String,
        strategy: DeployStrategy,
    },
    /// The new release's process was spawned; `port` is its slot's port (null without
    /// `[deploy]`).
    Started {
        release: String,
        pid: i32,
        port: Option<u16>,
        slot: usize,
    },
    /// The new release became ready `after_ms` into the deploy.
    Healthy { release: String, after_ms: u64 },
    /// New requests go to `release` on `port`.
    Switched { release: String, port: Option<u16> },
    /// The new release is watched for `for_ms`.
    Watching { release: String, for_ms: u64 },
    /// The old release was stopped.
    OldStopped { release: String },
}

/// How a release is rolled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeployStrategy {
    /// `[deploy]`: the idle slot, then a switch.
    PortSwap,
    /// No `[deploy]`: stop the old release, start the new one.
    Restart,
}

impl DeployStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployStrategy::PortSwap => "port-swap",
            DeployStrategy::Restart => "restart",
        }
    }
}

/// How a deploy ended (*contract*: `succeeded | failed | rolled_back`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployOutcome {
    Succeeded,
    /// Nothing was switched; the previous release serves.
    Failed,
    /// Switched back; the previous release serves again.
    RolledBack,
}

impl DeployOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployOutcome::Succeeded => "succeeded",
            DeployOutcome::Failed => "failed",
            DeployOutcome::RolledBack => "rolled_back",
        }
    }
}

/// The last line of a deploy or rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployResult {
    pub deploy_id: String,
    pub result: DeployOutcome,
    /// The release that was deployed.
    pub release: String,
    /// The release that was active before.
    pub previous: String,
    /// The release active now.
    pub active: String,
    pub duration_ms: u64,
    /// Why it did not succeed; `null` (present) on success.
    pub reason: Option<String>,
    /// Asked for as a rollback.
    pub rollback: bool,
}

/// `deploy --detach`: the deploy was accepted and goes on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployDetached {
    pub deploy_id: String,
    pub release: String,
    /// Always true.
    pub detached: bool,
}

/// The result of `deploy` and `rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeployReply {
    Finished(DeployResult),
    Detached(DeployDetached),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serialize as the socket does (through a `Value`: keys in name order).
    fn wire<T: Serialize>(v: &T) -> String {
        serde_json::to_value(v).unwrap().to_string()
    }

    #[test]
    fn the_result_line_of_docs_api_md_round_trips() {
        let line = r#"{"active":"v3","deploy_id":"api-1795340287967","duration_ms":5263,"previous":"v2","reason":null,"release":"v3","result":"succeeded","rollback":false}"#;
        let r: DeployReply = serde_json::from_str(line).unwrap();
        let DeployReply::Finished(f) = &r else {
            panic!("{r:?}")
        };
        assert_eq!(
            (f.result, f.reason.as_deref()),
            (DeployOutcome::Succeeded, None)
        );
        assert_eq!(wire(&r), line);
        let failed = r#"{"active":"v1","deploy_id":"api-1","duration_ms":60001,"previous":"v1","reason":"not ready within 60s","release":"v2","result":"rolled_back","rollback":true}"#;
        let r: DeployReply = serde_json::from_str(failed).unwrap();
        assert_eq!(wire(&r), failed);
    }

    #[test]
    fn a_detached_deploy_round_trips() {
        let line = r#"{"deploy_id":"api-1795340281725","detached":true,"release":"v2"}"#;
        let r: DeployReply = serde_json::from_str(line).unwrap();
        assert!(
            matches!(r, DeployReply::Detached(ref d) if d.detached),
            "{r:?}"
        );
        assert_eq!(wire(&r), line);
    }

    #[test]
    fn every_step_round_trips() {
        let lines = [
            r#"{"deploy_id":"api-1","elapsed_ms":0,"previous":"v1","release":"v2","step":"deploying","strategy":"port-swap"}"#,
            r#"{"deploy_id":"api-1","elapsed_ms":0,"previous":"v1","release":"v2","step":"deploying","strategy":"restart"}"#,
            r#"{"deploy_id":"api-1","elapsed_ms":3,"pid":13744,"port":9001,"release":"v2","slot":1,"step":"started"}"#,
            r#"{"deploy_id":"api-1","elapsed_ms":3,"pid":13744,"port":null,"release":"v2","slot":1,"step":"started"}"#,
            r#"{"after_ms":1200,"deploy_id":"api-1","elapsed_ms":1200,"release":"v2","step":"healthy"}"#,
            r#"{"deploy_id":"api-1","elapsed_ms":1201,"port":9001,"release":"v2","step":"switched"}"#,
            r#"{"deploy_id":"api-1","elapsed_ms":1201,"for_ms":5000,"release":"v2","step":"watching"}"#,
            r#"{"deploy_id":"api-1","elapsed_ms":6200,"release":"v1","step":"old_stopped"}"#,
        ];
        for line in lines {
            let step: DeployStep = serde_json::from_str(line).unwrap();
            assert_eq!(wire(&step), line);
        }
    }

    /// The supervisor's domain values become exactly the lines of docs/api.md.
    #[test]
    fn the_supervisors_values_become_the_documented_lines() {
        let step = DeployStep::from(DeployProgress {
            deploy_id: "api-1".into(),
            elapsed_ms: 3,
            step: Step::Started {
                release: "v2".into(),
                pid: 13744,
                port: None,
                slot: 1,
            },
        });
        assert_eq!(
            wire(&step),
            r#"{"deploy_id":"api-1","elapsed_ms":3,"pid":13744,"port":null,"release":"v2","slot":1,"step":"started"}"#
        );
        let step = DeployStep::from(DeployProgress {
            deploy_id: "api-1".into(),
            elapsed_ms: 0,
            step: Step::Deploying {
                release: "v2".into(),
                previous: "v1".into(),
                strategy: Strategy::PortSwap,
            },
        });
        assert_eq!(
            wire(&step),
            r#"{"deploy_id":"api-1","elapsed_ms":0,"previous":"v1","release":"v2","step":"deploying","strategy":"port-swap"}"#
        );
        let result = DeployResult::from(DeployReport {
            deploy_id: "api-1795340287967".into(),
            result: Outcome::Succeeded,
            release: "v3".into(),
            previous: "v2".into(),
            active: "v3".into(),
            duration_ms: 5263,
            reason: None,
            rollback: false,
        });
        assert_eq!(
            wire(&DeployReply::Finished(result)),
            r#"{"active":"v3","deploy_id":"api-1795340287967","duration_ms":5263,"previous":"v2","reason":null,"release":"v3","result":"succeeded","rollback":false}"#
        );
    }
}
