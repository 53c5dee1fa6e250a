//! The runner user, read from the image's `/etc/passwd` and `/etc/group`.
//!
//! The image builder looks the user up in the root filesystem tree it is
//! packing and writes the result into the agent's config, so a missing user
//! fails the build, not every boot, and booting reads neither file. In a
//! hangar VM the accounts are the image's files and nothing else (no
//! daemons, no directory service), so plain parsing is the whole lookup; it
//! does not go through NSS (the agent is linked statically, and a static
//! glibc's `getpwnam` would `dlopen` the image's NSS modules).

use serde::{Deserialize, Serialize};

/// An account from `/etc/passwd`, with what `/etc/group` adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    /// Whether `/etc/group` lists the user in a group other than its
    /// primary one (then the runner needs those groups set, e.g. `docker`,
    /// which the agent does through `/usr/bin/setpriv`).
    pub supplementary_groups: bool,
}

/// Looks `name` up in the text of `/etc/passwd` and `/etc/group`.
pub fn lookup(passwd: &str, group: &str, name: &str) -> Result<Account, String> {
    let line = passwd
        .lines()
        .find(|l| l.split(':').next() == Some(name))
        .ok_or_else(|| format!("user {name} does not exist in the image's /etc/passwd"))?;
    // name:password:uid:gid:gecos:home:shell
    let fields: Vec<&str> = line.split(':').collect();
    let bad = |what: &str| format!("/etc/passwd entry of {name}: bad {what} in {line:?}");
    if fields.len() < 7 {
        return Err(bad("field count"));
    }
    let uid = fields[2].parse().map_err(|_| bad("uid"))?;
    let gid: u32 = fields[3].parse().map_err(|_| bad("gid"))?;
    // name:password:gid:member,member
    let supplementary_groups = group.lines().any(|l| {
        let g: Vec<&str> = l.split(':').collect();
        g.len() >= 4
            && g[2].parse::<u32>().is_ok_and(|id| id != gid)
            && g[3].split(',').any(|member| member.trim() == name)
    });
    Ok(Account {
        name: name.to_owned(),
        uid,
        gid,
        home: fields[5].to_owned(),
        supplementary_groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          runner:x:1001:1001::/home/runner:/bin/bash\n\
                          broken:x:uid:1::/:/bin/sh\n";

    #[test]
    fn finds_the_user_and_its_groups() {
        let plain = lookup(PASSWD, "root:x:0:\nrunner:x:1001:\n", "runner").unwrap();
        assert_eq!(
            plain,
            Account {
                name: "runner".into(),
                uid: 1001,
                gid: 1001,
                home: "/home/runner".into(),
                supplementary_groups: false,
            }
        );
        let docker = lookup(PASSWD, "runner:x:1001:\ndocker:x:999:alice,runner\n", "runner");
        assert!(docker.unwrap().supplementary_groups);
        // Being listed in one's own primary group is not a supplementary one.
        let own = lookup(PASSWD, "runner:x:1001:runner\n", "runner").unwrap();
        assert!(!own.supplementary_groups);
    }

    #[test]
    fn a_missing_user_or_a_broken_entry_is_a_clear_error() {
        let missing = lookup(PASSWD, "", "nobody-here").unwrap_err();
        assert!(missing.contains("nobody-here") && missing.contains("/etc/passwd"), "{missing}");
        let broken = lookup(PASSWD, "", "broken").unwrap_err();
        assert!(broken.contains("bad uid"), "{broken}");
        // A prefix of a name is not the name.
        assert!(lookup(PASSWD, "", "run").is_err());
    }
}
