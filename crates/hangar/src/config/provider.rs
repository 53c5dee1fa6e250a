//! `provider` of a `[[pools]]` entry: which machines run the pool's
//! runners, with that provider's typed settings. The closed list of
//! provider kinds lives here, in the binary, so the scheduler never depends
//! on a provider implementation.
//!
//! ```toml
//! [[pools]]
//! name = "linux"
//! labels = ["linux", "x64"]
//! max_runners = 8
//! provider = "microvm"            # a kind with its default settings, or:
//!
//! [pools.provider.microvm]        # the kind as a table of its settings
//! vcpus = 2
//! ```
//!
//! - `microvm`: a fresh QEMU microVM per job ([`MicrovmSettings`]).
//! - `process`: a local child process per job, **NOT isolated**
//!   ([`ProcessConfig`]; `command` is required).
//! - `auto` (the default): microVMs when the host can run them. When it
//!   cannot, the pool is *unhealthy* with the reason and runs nothing,
//!   unless it says `allow_unisolated = true`, which falls back to local
//!   processes with a loud warning. Isolation never goes away silently.

use std::fmt;

use hangar_provider_microvm::MicrovmSettings;
use hangar_provider_process::ProcessConfig;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// The provider kinds this build knows, as the file spells them.
pub const PROVIDER_KINDS: [&str; 3] = ["auto", "microvm", "process"];

/// One pool's provider, parsed and checked when the file is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderConfig {
    Auto(AutoSettings),
    Microvm(MicrovmSettings),
    Process(ProcessConfig),
}

impl Default for ProviderConfig {
    fn default() -> ProviderConfig {
        ProviderConfig::Auto(AutoSettings::default())
    }
}

impl ProviderConfig {
    /// The kind as the file spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Auto(_) => "auto",
            ProviderConfig::Microvm(_) => "microvm",
            ProviderConfig::Process(_) => "process",
        }
    }
}

/// `[pools.provider.auto]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoSettings {
    /// The VMs, when microVMs are usable. Their network defaults to NAT
    /// (a runner must reach GitHub).
    #[serde(default)]
    pub microvm: Option<MicrovmSettings>,
    /// Run jobs as local processes (NOT isolated) when microVMs are not
    /// usable, instead of running nothing. Off by default.
    #[serde(default)]
    pub allow_unisolated: bool,
    /// The processes of that fallback; default: the Actions runner in
    /// `<data_dir>/actions-runner/run.sh`.
    #[serde(default)]
    pub process: Option<ProcessConfig>,
}

impl<'de> Deserialize<'de> for ProviderConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ProviderConfig, D::Error> {
        d.deserialize_any(ProviderVisitor)
    }
}

struct ProviderVisitor;

fn unknown_kind<E: de::Error>(kind: &str) -> E {
    E::custom(format!("expected one of {PROVIDER_KINDS:?}, got {kind:?}"))
}

impl<'de> Visitor<'de> for ProviderVisitor {
    type Value = ProviderConfig;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a provider kind ({PROVIDER_KINDS:?}) or a table with one of them as its key")
    }

    fn visit_str<E: de::Error>(self, kind: &str) -> Result<ProviderConfig, E> {
        match kind {
            "auto" => Ok(ProviderConfig::Auto(AutoSettings::default())),
            "microvm" => Ok(ProviderConfig::Microvm(MicrovmSettings::default())),
            "process" => Err(E::custom(
                "a process pool needs its runner program: write `[pools.provider.process]` with \
                 `command = \"/path/to/run.sh\"`",
            )),
            other => Err(unknown_kind(other)),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ProviderConfig, A::Error> {
        let Some(kind) = map.next_key::<String>()? else {
            return Err(de::Error::custom(format!(
                "expected one of {PROVIDER_KINDS:?} as the key of the provider table"
            )));
        };
        // Deserialized straight from the file's own deserializer, so a bad
        // key inside keeps its path and line.
        let config = match kind.as_str() {
            "auto" => ProviderConfig::Auto(map.next_value()?),
            "microvm" => ProviderConfig::Microvm(map.next_value()?),
            "process" => ProviderConfig::Process(map.next_value()?),
            other => return Err(unknown_kind(other)),
        };
        if let Some(second) = map.next_key::<String>()? {
            return Err(de::Error::custom(format!(
                "expected one provider per pool, got a second one: {second:?}"
            )));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Pool {
        provider: ProviderConfig,
    }

    fn parse(text: &str) -> Result<ProviderConfig, String> {
        toml::from_str::<Pool>(text).map(|p| p.provider).map_err(|e| e.to_string())
    }

    #[test]
    fn kinds_parse_as_names_or_tables() {
        assert_eq!(parse("provider = \"auto\""), Ok(ProviderConfig::default()));
        assert_eq!(
            parse("provider = \"microvm\""),
            Ok(ProviderConfig::Microvm(MicrovmSettings::default()))
        );
        let ProviderConfig::Microvm(vm) = parse("[provider.microvm]\nvcpus = 4\n").unwrap() else {
            panic!("a microvm provider");
        };
        assert_eq!(vm.vcpus, 4);
        let ProviderConfig::Process(p) = parse("[provider.process]\ncommand = \"/r\"\n").unwrap()
        else {
            panic!("a process provider");
        };
        assert_eq!(p.command, std::path::PathBuf::from("/r"));
        let ProviderConfig::Auto(auto) =
            parse("[provider.auto]\nallow_unisolated = true\nmicrovm = { vcpus = 1 }\n").unwrap()
        else {
            panic!("an auto provider");
        };
        assert!(auto.allow_unisolated);
        assert_eq!(auto.microvm.map(|m| m.vcpus), Some(1));
    }

    #[test]
    fn mistakes_say_what_was_expected() {
        let e = parse("provider = \"ec2\"").unwrap_err();
        assert!(e.contains("expected one of [\"auto\", \"microvm\", \"process\"]"), "{e}");
        let e = parse("provider = \"process\"").unwrap_err();
        assert!(e.contains("needs its runner program"), "{e}");
        let e = parse("[provider.microvm]\ncpus = 4\n").unwrap_err();
        assert!(e.contains("unknown field `cpus`"), "{e}");
        let e = parse("[provider.microvm]\n[provider.process]\ncommand = \"/r\"\n").unwrap_err();
        assert!(e.contains("one provider per pool"), "{e}");
        let e = parse("[provider.auto]\nfallback = true\n").unwrap_err();
        assert!(e.contains("unknown field `fallback`"), "{e}");
    }
}
