//! What a gateway surface admits beyond a valid token: which orgs' tokens and which token
//! types. Checked after verification and before a use is consumed, so a refusal spends nothing.
//!
//! A tenant's gateway key admits its own org only; an operator key (`--any-org`) and the
//! embeddable verifier by default admit every org; `/v1/stream` admits the token types in
//! `STREAMTOKEN_STREAM_TOKEN_TYPES`, and `/v1/forward-auth` both the key's orgs and those types.

use std::collections::BTreeSet;

use crate::token::claims::{Claims, RejectReason};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// `None` admits every org.
    orgs: Option<BTreeSet<String>>,
    /// `None` admits every token type.
    token_types: Option<BTreeSet<String>>,
}

impl Policy {
    /// Every org, every token type.
    pub fn any() -> Self {
        Policy::default()
    }

    /// Only tokens minted for `org`.
    pub fn only_org(mut self, org: &str) -> Self {
        self.orgs = Some(BTreeSet::from([org.to_owned()]));
        self
    }

    /// Only tokens minted for one of `orgs`.
    pub fn only_orgs<I: IntoIterator<Item = S>, S: Into<String>>(mut self, orgs: I) -> Self {
        self.orgs = Some(orgs.into_iter().map(Into::into).collect());
        self
    }

    /// Only tokens of one of `types`.
    pub fn only_token_types<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        types: I,
    ) -> Self {
        self.token_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// What both policies admit: forward-auth holds the caller key's orgs and the stream's token
    /// types at once.
    pub fn and(&self, other: &Policy) -> Policy {
        Policy {
            orgs: both(&self.orgs, &other.orgs),
            token_types: both(&self.token_types, &other.token_types),
        }
    }

    /// The org check comes first: a key of another org learns nothing about the token's type.
    pub fn check(&self, claims: &Claims) -> Result<(), RejectReason> {
        if let Some(orgs) = &self.orgs {
            if !orgs.contains(&claims.org) {
                return Err(RejectReason::WrongOrg);
            }
        }
        if let Some(types) = &self.token_types {
            if !types.contains(&claims.token_type) {
                return Err(RejectReason::WrongTokenType);
            }
        }
        Ok(())
    }
}

/// The intersection of two admitted sets, `None` standing for every value.
fn both(a: &Option<BTreeSet<String>>, b: &Option<BTreeSet<String>>) -> Option<BTreeSet<String>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.intersection(b).cloned().collect()),
        (Some(only), None) | (None, Some(only)) => Some(only.clone()),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(org: &str, token_type: &str) -> Claims {
        Claims {
            iss: "streamtoken".into(),
            aud: "streamtoken-gateway".into(),
            org: org.into(),
            token_type: token_type.into(),
            jti: uuid::Uuid::new_v4(),
            iat: 0,
            exp: 60,
            max_session_duration_seconds: 60,
            ctx: Default::default(),
            uses: 1,
            reconnect_grace_seconds: 0,
        }
    }

    #[test]
    fn the_default_policy_admits_every_org_and_type() {
        assert_eq!(Policy::any().check(&claims("a", "chat")), Ok(()));
    }

    #[test]
    fn another_orgs_token_is_refused_before_its_type_is_looked_at() {
        let policy = Policy::any()
            .only_org("acme")
            .only_token_types(["realtime"]);
        assert_eq!(policy.check(&claims("acme", "realtime")), Ok(()));
        assert_eq!(
            policy.check(&claims("other", "chat")),
            Err(RejectReason::WrongOrg)
        );
        assert_eq!(
            policy.check(&claims("acme", "chat")),
            Err(RejectReason::WrongTokenType)
        );
    }

    #[test]
    fn two_policies_together_admit_only_what_both_admit() {
        let key = Policy::any().only_org("acme");
        let stream = Policy::any().only_token_types(["realtime", "chat"]);
        let both = key
            .and(&stream)
            .and(&Policy::any().only_token_types(["realtime"]));
        assert_eq!(both.check(&claims("acme", "realtime")), Ok(()));
        assert_eq!(
            both.check(&claims("other", "realtime")),
            Err(RejectReason::WrongOrg)
        );
        assert_eq!(
            both.check(&claims("acme", "chat")),
            Err(RejectReason::WrongTokenType)
        );
        assert_eq!(Policy::any().and(&Policy::any()), Policy::any());
        let disjoint = Policy::any()
            .only_orgs(["a"])
            .and(&Policy::any().only_orgs(["b"]));
        assert_eq!(
            disjoint.check(&claims("a", "chat")),
            Err(RejectReason::WrongOrg)
        );
    }
}
