//! `--configmap` and `--configmap-key` values, checked with the API server's
//! own rules so a typo fails at startup instead of as a watch that never
//! matches.

use std::fmt;
use std::str::FromStr;

/// `NAMESPACE/NAME` of a ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectName {
    namespace: String,
    name: String,
}

impl ObjectName {
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// An RFC 1123 label: what a namespace name must be.
pub(super) fn check_label(what: &str, text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > 63 {
        return Err(format!("{what} {text:?} must be 1 to 63 characters"));
    }
    let ok = text.chars().all(|c| is_alnum(c) || c == '-')
        && text.starts_with(is_alnum)
        && text.ends_with(is_alnum);
    if !ok {
        return Err(format!(
            "{what} {text:?} must consist of lower case alphanumeric characters or '-', \
             and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// An RFC 1123 subdomain: what a ConfigMap name must be.
fn check_subdomain(what: &str, text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > 253 {
        return Err(format!("{what} {text:?} must be 1 to 253 characters"));
    }
    let ok = text.split('.').all(|part| {
        !part.is_empty()
            && part.chars().all(|c| is_alnum(c) || c == '-')
            && part.starts_with(is_alnum)
            && part.ends_with(is_alnum)
    });
    if !ok {
        return Err(format!(
            "{what} {text:?} must consist of lower case alphanumeric characters, '-' or '.', \
             and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

impl FromStr for ObjectName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let Some((namespace, name)) = text.split_once('/') else {
            return Err("must be NAMESPACE/NAME".into());
        };
        check_label("namespace", namespace)?;
        check_subdomain("name", name)?;
        Ok(ObjectName {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// A key of a ConfigMap's data (the API server's rule for config keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMapKey(String);

impl ConfigMapKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConfigMapKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ConfigMapKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > 253 {
            return Err("must be 1 to 253 characters".into());
        }
        if text == "." || text == ".." {
            return Err("must not be '.' or '..'".into());
        }
        if !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err("must consist of alphanumeric characters, '-', '_' or '.'".into());
        }
        Ok(ConfigMapKey(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names() {
        let name: ObjectName = "kube-system/ip-masq-agent".parse().unwrap();
        assert_eq!(name.namespace(), "kube-system");
        assert_eq!(name.name(), "ip-masq-agent");
        assert_eq!(name.to_string(), "kube-system/ip-masq-agent");
        assert!("ns/a.b-c.d".parse::<ObjectName>().is_ok());
        for (bad, needle) in [
            ("ip-masq-agent", "NAMESPACE/NAME"),
            ("/name", "namespace \"\""),
            ("ns/", "name \"\""),
            ("Kube-System/x", "namespace \"Kube-System\""),
            ("ns/Upper", "name \"Upper\""),
            ("ns/a..b", "name \"a..b\""),
            ("ns/-a", "name \"-a\""),
            ("ns/a/b", "name \"a/b\""),
            ("a_b/x", "namespace \"a_b\""),
        ] {
            let err = bad.parse::<ObjectName>().unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        let long = format!("{}/x", "a".repeat(64));
        assert!(long.parse::<ObjectName>().unwrap_err().contains("1 to 63"));
    }

    #[test]
    fn keys() {
        for good in ["config", "ip-masq-agent.yaml", "a_b", "..x"] {
            assert_eq!(good.parse::<ConfigMapKey>().unwrap().as_str(), good);
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü"] {
            assert!(bad.parse::<ConfigMapKey>().is_err(), "{bad}");
        }
    }
}
