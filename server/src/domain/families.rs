//! Per-family profiles: what a board family's hardware decides about a
//! stress job (GIC version, vCPU and memory defaults) and what its boards
//! are expected to report (MIDR, page size, THP mode).
//!
//! Built-in profiles hold what is known of each family; a `[[family]]`
//! table in fleet.toml overrides them field by field. The expectations are
//! checked against every board's facts: a mismatch is a warning on the
//! board's page, API answer and the server log, never a silent difference
//! (a Kunpeng running a 64K-page kernel has 512M stage-2 blocks, not 2M).

use armfleet_protocol::{BoardFacts, MigrateCancelParams};
use serde::{Deserialize, Serialize};

use crate::domain::config::Family;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FamilyProfile {
    /// MIDR_EL1 of the family's cores; implementer and part number are
    /// compared (variant and revision differ between steppings).
    pub midr: Option<u32>,
    /// GIC version the guests' `virt` machine uses under KVM.
    pub gic_version: Option<u8>,
    /// Base page size of the boards' kernels, KiB (4, 16, 64): decides the
    /// stage-2 block size (2M, 32M, 512M) and the hugetlb size to back with.
    pub page_size_kib: Option<u64>,
    /// Expected transparent hugepage mode (`always`, `madvise`, `never`).
    pub thp: Option<String>,
    /// Guest defaults for plans that do not set them.
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u32>,
}

const fn midr(implementer: u32, part: u32) -> Option<u32> {
    Some(implementer << 24 | 0xf << 16 | part << 4)
}

impl FamilyProfile {
    /// What armfleet knows of a family without being told.
    pub fn builtin(family: Family) -> FamilyProfile {
        let p = |midr, gic, page: u64| FamilyProfile {
            midr,
            gic_version: gic,
            page_size_kib: Some(page),
            ..Default::default()
        };
        match family {
            // TaiShan v110 cores.
            Family::Kunpeng920 => p(midr(0x48, 0xd01), Some(3), 4),
            // Neoverse N1.
            Family::AmpereAltra => p(midr(0x41, 0xd0c), Some(3), 4),
            Family::AmpereOne => p(midr(0xc0, 0xac3), Some(3), 4),
            // Neoverse V2; its distributions ship 64K-page kernels.
            Family::NvidiaGrace => p(midr(0x41, 0xd4f), Some(3), 64),
            // Cortex-A72 and A76 behind a GIC-400 (GICv2); the Pi 5's
            // kernel_2712 uses 16K pages.
            Family::Rpi4 => p(midr(0x41, 0xd08), Some(2), 4),
            Family::Rpi5 => p(midr(0x41, 0xd0b), Some(2), 16),
            // `-cpu max` under TCG; GICv3 (the board is started so).
            Family::VirtArm64 => FamilyProfile {
                gic_version: Some(3),
                page_size_kib: Some(4),
                ..Default::default()
            },
            Family::GenericArm64 | Family::QemuVirt | Family::X86_64 => FamilyProfile::default(),
        }
    }

    /// `self` with the fields `over` sets replaced.
    fn merged(mut self, over: &RawFamily) -> FamilyProfile {
        if over.midr.is_some() {
            self.midr = over.midr.as_deref().and_then(parse_midr);
        }
        self.gic_version = over.gic_version.or(self.gic_version);
        self.page_size_kib = over.page_size_kib.or(self.page_size_kib);
        self.thp = over.thp.clone().or(self.thp);
        self.vcpus = over.vcpus.or(self.vcpus);
        self.memory_mib = over.memory_mib.or(self.memory_mib);
        self
    }

    /// Fills what a plan left unset (named in `given`, the plan's own keys)
    /// from the profile.
    pub fn apply(&self, params: &mut MigrateCancelParams, given: &[String]) {
        let unset = |k: &str| !given.iter().any(|g| g == k);
        if let (Some(v), true) = (self.vcpus, unset("vcpus")) {
            params.vcpus = v;
        }
        if let (Some(m), true) = (self.memory_mib, unset("memory_mib")) {
            params.memory_mib = m;
        }
        if let (Some(g), true) = (self.gic_version, unset("gic_version")) {
            params.gic_version = Some(g);
        }
    }

    /// Where a board's facts contradict its family's profile, in words.
    pub fn check(&self, family: Family, facts: &BoardFacts) -> Vec<String> {
        let mut warnings = vec![];
        let hex = |s: &Option<String>| {
            s.as_deref()
                .and_then(|v| u32::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
        };
        if let Some(m) = self.midr {
            let (want_impl, want_part) = (m >> 24, (m >> 4) & 0xfff);
            match (hex(&facts.cpu_implementer), hex(&facts.cpu_part)) {
                (Some(i), Some(p)) if (i, p) != (want_impl, want_part) => warnings.push(format!(
                    "MIDR mismatch: the board reports implementer {i:#04x} part {p:#05x}, family {} expects implementer {want_impl:#04x} part {want_part:#05x} (MIDR {m:#010x}): wrong family in fleet.toml, or a different CPU than the profile says",
                    family.as_str()
                )),
                (Some(_), Some(_)) => {}
                _ => warnings.push(format!(
                    "the board reports no MIDR (CPU implementer/part); family {} expects {m:#010x}",
                    family.as_str()
                )),
            }
        }
        if let Some(want) = self.page_size_kib {
            let have = facts.memory.page_size_kib;
            if have != 0 && have != want {
                warnings.push(format!(
                    "page size mismatch: the board's kernel uses {have}K pages, family {} expects {want}K; its stage-2 blocks are {} (not {})",
                    family.as_str(),
                    block_name(have),
                    block_name(want)
                ));
            }
        }
        if let Some(want) = &self.thp {
            let have = &facts.memory.thp;
            if !have.is_empty() && have != want {
                warnings.push(format!(
                    "THP mode mismatch: the board's transparent hugepages are `{have}`, family {} expects `{want}`",
                    family.as_str()
                ));
            }
        }
        warnings
    }
}

fn block_name(page_kib: u64) -> String {
    match armfleet_protocol::block_size_kib(page_kib) {
        Some(k) if k >= 1024 => format!("{}M", k / 1024),
        Some(k) => format!("{k}K"),
        None => "unknown".into(),
    }
}

/// `0x481fd010` → 0x481fd010.
pub fn parse_midr(s: &str) -> Option<u32> {
    u32::from_str_radix(
        s.trim().trim_start_matches("0x").trim_start_matches("0X"),
        16,
    )
    .ok()
}

/// A `[[family]]` table of fleet.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFamily {
    pub name: Family,
    pub midr: Option<String>,
    pub gic_version: Option<u8>,
    pub page_size_kib: Option<u64>,
    pub thp: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u32>,
}

impl RawFamily {
    /// The built-in profile with this table's fields, or what is wrong.
    pub fn profile(&self) -> Result<FamilyProfile, String> {
        let name = self.name.as_str();
        if let Some(m) = &self.midr {
            if parse_midr(m).is_none() {
                return Err(format!(
                    "family `{name}`: midr `{m}` is not a 32-bit hex value (e.g. \"0x481fd010\")"
                ));
            }
        }
        if let Some(g) = self.gic_version.filter(|g| ![2, 3, 4].contains(g)) {
            return Err(format!(
                "family `{name}`: gic_version must be 2, 3 or 4, not {g}"
            ));
        }
        if let Some(p) = self.page_size_kib.filter(|p| ![4, 16, 64].contains(p)) {
            return Err(format!(
                "family `{name}`: page_size_kib must be 4, 16 or 64, not {p}"
            ));
        }
        if let Some(t) = self
            .thp
            .as_deref()
            .filter(|t| !["always", "madvise", "never"].contains(t))
        {
            return Err(format!(
                "family `{name}`: thp must be always, madvise or never, not `{t}`"
            ));
        }
        if self.vcpus == Some(0) || self.vcpus.is_some_and(|v| v > 64) {
            return Err(format!("family `{name}`: vcpus must be within 1..=64"));
        }
        if self.memory_mib.is_some_and(|m| m < 64) {
            return Err(format!("family `{name}`: memory_mib must be at least 64"));
        }
        Ok(FamilyProfile::builtin(self.name).merged(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(implementer: &str, part: &str, page: u64, thp: &str) -> BoardFacts {
        let mut f = BoardFacts {
            kernel_release: String::new(),
            kernel_version: String::new(),
            arch: "arm64".into(),
            cpu_implementer: Some(implementer.into()),
            cpu_part: Some(part.into()),
            cores: 4,
            mem_total_kib: 0,
            kvm: Default::default(),
            qemu: vec![],
            hugepages: Default::default(),
            executor: Default::default(),
            build_id: None,
            host_kind: Default::default(),
            ssh_board: None,
            kvm_mode: None,
            memory: Default::default(),
        };
        f.memory.page_size_kib = page;
        f.memory.thp = thp.into();
        f
    }

    #[test]
    fn a_board_that_is_not_what_its_family_says_is_warned_about() {
        let p = FamilyProfile::builtin(Family::Kunpeng920);
        assert!(
            p.check(Family::Kunpeng920, &facts("0x48", "0xd01", 4, "madvise"))
                .is_empty()
        );
        let w = p.check(Family::Kunpeng920, &facts("0x41", "0xd0c", 64, "madvise"));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("MIDR mismatch") && w[0].contains("0x41") && w[0].contains("0xd0c"),
            "{w:?}"
        );
        assert!(w[1].contains("64K pages") && w[1].contains("512M"), "{w:?}");
    }

    #[test]
    fn fleet_toml_overrides_the_builtin_profile_field_by_field() {
        let raw: RawFamily = toml::from_str(
            "name = \"kunpeng920\"\npage_size_kib = 64\nthp = \"always\"\nvcpus = 4\n",
        )
        .unwrap();
        let p = raw.profile().unwrap();
        assert_eq!(p.midr, FamilyProfile::builtin(Family::Kunpeng920).midr);
        assert_eq!(p.page_size_kib, Some(64));
        let w = p.check(Family::Kunpeng920, &facts("0x48", "0xd01", 4, "madvise"));
        assert!(w.iter().any(|w| w.contains("THP mode mismatch")), "{w:?}");
        // The profile fills only what the plan left out.
        let mut params = MigrateCancelParams::default();
        p.apply(&mut params, &["memory_mib".into()]);
        assert_eq!(params.vcpus, 4);
        assert_eq!(params.gic_version, Some(3));
        assert_eq!(params.memory_mib, MigrateCancelParams::default().memory_mib);
        let bad: RawFamily = toml::from_str("name = \"rpi5\"\npage_size_kib = 8\n").unwrap();
        assert!(
            bad.profile()
                .unwrap_err()
                .contains("page_size_kib must be 4, 16 or 64")
        );
    }
}
