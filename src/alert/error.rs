//! Why the Alerter refused a request (`orchctl alert-test`, `silence`, `unsilence`). The API maps
//! these to its wire errors and exit codes (`api::error`); the texts are what `orchctl` prints.

/// A request the Alerter could not carry out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlertError {
    /// The Alerter task did not answer.
    #[error(
        "the alerter did not answer: orchd is stopping, or the alerter crashed and is being \
         started again (see `orchctl status`); try again"
    )]
    Gone,
    /// `silence` while the most silences orchd keeps are active.
    #[error(
        "{max} silences are active, the most orchd keeps; end some with `orchctl unsilence ID` \
         (see `orchctl silences`)"
    )]
    TooManySilences { max: usize },
    /// `unsilence` of an id that is not an active silence.
    #[error("no silence {id:?}; see `orchctl silences`")]
    NoSuchSilence { id: String },
    /// `alert-test CHANNEL` of a channel that is not configured; `known` is the configured ones,
    /// or "none configured".
    #[error("no alert channel {channel:?}; channels: {known}")]
    NoSuchChannel { channel: String, known: String },
    /// `alert-test` without any channel configured.
    #[error(
        "no alert channels are configured ([[alerts.email]], [[alerts.webhook]] in orchd.toml)"
    )]
    NoChannels,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_the_operator_facing_texts() {
        assert_eq!(
            AlertError::TooManySilences { max: 1000 }.to_string(),
            "1000 silences are active, the most orchd keeps; end some with `orchctl unsilence \
             ID` (see `orchctl silences`)"
        );
        assert_eq!(
            AlertError::NoSuchSilence { id: "x".into() }.to_string(),
            "no silence \"x\"; see `orchctl silences`"
        );
        assert_eq!(
            AlertError::NoSuchChannel {
                channel: "sms".into(),
                known: "oncall, slack".into()
            }
            .to_string(),
            "no alert channel \"sms\"; channels: oncall, slack"
        );
    }
}
