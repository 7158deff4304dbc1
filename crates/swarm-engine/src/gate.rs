//! The resource gate: no worker starts while the machine's available memory
//! is below `MIN_FREE_MEMORY_MB` or its 1-minute load average is above
//! `MAX_LOAD_AVERAGE`. Ready tasks wait; the scheduler asks again every
//! second, and the reason shows in `agentswarm status`.

use std::path::PathBuf;

/// What the gate looks at.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Readings {
    pub available_mb: u64,
    pub load1: f64,
}

/// Where readings come from: `/proc` on a real machine, a file in tests.
pub trait StatsSource: Send + Sync {
    fn read(&self) -> std::io::Result<Readings>;
    fn describe(&self) -> String;
}

/// `MemAvailable` of `/proc/meminfo` and the first field of `/proc/loadavg`.
pub struct ProcStats;

impl StatsSource for ProcStats {
    fn read(&self) -> std::io::Result<Readings> {
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        let kb = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| std::io::Error::other("/proc/meminfo has no MemAvailable"))?;
        let loadavg = std::fs::read_to_string("/proc/loadavg")?;
        let load1 = loadavg
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| std::io::Error::other("cannot parse /proc/loadavg"))?;
        Ok(Readings {
            available_mb: kb / 1024,
            load1,
        })
    }

    fn describe(&self) -> String {
        "/proc/meminfo (MemAvailable) and /proc/loadavg".into()
    }
}

/// Readings from a JSON file (`{"available_mb": 512, "load1": 0.5}`), read
/// afresh each time: tests and drills change the file to open and close the gate.
pub struct FileStats(pub PathBuf);

impl StatsSource for FileStats {
    fn read(&self) -> std::io::Result<Readings> {
        let text = std::fs::read_to_string(&self.0)?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }

    fn describe(&self) -> String {
        format!("the file {} (AGENTSWARM_GATE_STATS_FILE)", self.0.display())
    }
}

/// The gate as it stands, for the status API and the metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GateStatus {
    /// Whether a new worker may start now.
    pub open: bool,
    /// Why not, when closed.
    pub reason: Option<String>,
    /// Available memory read now, in MB; `None` when it cannot be read.
    pub free_memory_mb: Option<u64>,
    /// The 1-minute load average read now; `None` when it cannot be read.
    pub load_1m: Option<f64>,
    /// `MIN_FREE_MEMORY_MB`; 0 = the check is off.
    pub min_free_memory_mb: u64,
    /// `MAX_LOAD_AVERAGE`; 0 = the check is off.
    pub max_load_average: f64,
}

pub struct Gate {
    source: Box<dyn StatsSource>,
    min_free_mb: u64,
    max_load: f64,
}

impl Gate {
    pub fn new(source: Box<dyn StatsSource>, min_free_mb: u64, max_load: f64) -> Self {
        Self {
            source,
            min_free_mb,
            max_load,
        }
    }

    pub fn from_config(config: &swarm_config::Config) -> Self {
        let source: Box<dyn StatsSource> = match &config.gate_stats_file {
            Some(p) => Box::new(FileStats(p.clone())),
            None => Box::new(ProcStats),
        };
        Self::new(source, config.min_free_memory_mb, config.max_load_average)
    }

    pub fn readings(&self) -> std::io::Result<Readings> {
        self.source.read()
    }

    pub fn source(&self) -> String {
        self.source.describe()
    }

    /// `Ok(())` when a worker may start, else why not. Readings that cannot
    /// be had do not hold work back (the failure is logged).
    pub fn check(&self) -> Result<(), String> {
        if self.min_free_mb == 0 && self.max_load == 0.0 {
            return Ok(());
        }
        let r = match self.source.read() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, source = %self.source.describe(), "resource gate: no readings; not holding work back");
                return Ok(());
            }
        };
        verdict(&r, self.min_free_mb, self.max_load)
    }

    /// What [`Gate::check`] would say of readings taken elsewhere (a worker
    /// node's, over its channel).
    pub fn judge(&self, r: &Readings) -> Result<(), String> {
        verdict(r, self.min_free_mb, self.max_load)
    }

    /// Reads the machine once (also when both checks are off, for the
    /// display) and says what [`Gate::check`] would.
    pub fn status(&self) -> GateStatus {
        let readings = self.source.read().ok();
        let verdict = match &readings {
            Some(r) => verdict(r, self.min_free_mb, self.max_load),
            // As `check`: no readings, no holding back.
            None => Ok(()),
        };
        GateStatus {
            open: verdict.is_ok(),
            reason: verdict.err(),
            free_memory_mb: readings.map(|r| r.available_mb),
            load_1m: readings.map(|r| r.load1),
            min_free_memory_mb: self.min_free_mb,
            max_load_average: self.max_load,
        }
    }
}

fn verdict(r: &Readings, min_free_mb: u64, max_load: f64) -> Result<(), String> {
    let mut why = Vec::new();
    if min_free_mb > 0 && r.available_mb < min_free_mb {
        why.push(format!(
            "free memory {} MB < {min_free_mb} MB (MIN_FREE_MEMORY_MB)",
            r.available_mb
        ));
    }
    if max_load > 0.0 && r.load1 > max_load {
        why.push(format!(
            "load average {:.2} > {max_load:.2} (MAX_LOAD_AVERAGE)",
            r.load1
        ));
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_names_each_bound() {
        let low = Readings {
            available_mb: 812,
            load1: 0.5,
        };
        assert_eq!(
            verdict(&low, 1024, 3.0).unwrap_err(),
            "free memory 812 MB < 1024 MB (MIN_FREE_MEMORY_MB)"
        );
        let busy = Readings {
            available_mb: 4096,
            load1: 5.25,
        };
        assert!(verdict(&busy, 1024, 3.0)
            .unwrap_err()
            .contains("load average 5.25 > 3.00"));
        assert!(verdict(&busy, 1024, 0.0).is_ok());
        assert!(verdict(&low, 0, 3.0).is_ok());
    }

    #[test]
    fn proc_stats_read_this_machine() {
        let r = ProcStats.read().unwrap();
        assert!(r.available_mb > 0);
        assert!(r.load1 >= 0.0);
    }

    #[test]
    fn file_stats_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.json");
        std::fs::write(&path, r#"{"available_mb": 100, "load1": 0.1}"#).unwrap();
        let gate = Gate::new(Box::new(FileStats(path.clone())), 1024, 3.0);
        assert!(gate.check().unwrap_err().contains("free memory 100 MB"));
        std::fs::write(&path, r#"{"available_mb": 2000, "load1": 0.1}"#).unwrap();
        assert!(gate.check().is_ok());
    }

    #[test]
    fn status_reads_once_and_agrees_with_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.json");
        std::fs::write(&path, r#"{"available_mb": 100, "load1": 4.5}"#).unwrap();
        let gate = Gate::new(Box::new(FileStats(path.clone())), 1024, 3.0);
        let s = gate.status();
        assert!(!s.open);
        assert_eq!(s.reason, gate.check().err());
        assert_eq!(s.free_memory_mb, Some(100));
        assert_eq!(s.load_1m, Some(4.5));
        assert_eq!((s.min_free_memory_mb, s.max_load_average), (1024, 3.0));
        // Checks off: open, readings still shown.
        let off = Gate::new(Box::new(FileStats(path.clone())), 0, 0.0).status();
        assert!(off.open && off.reason.is_none());
        assert_eq!(off.free_memory_mb, Some(100));
        // No readings: open, as `check`.
        std::fs::remove_file(&path).unwrap();
        let blind = gate.status();
        assert!(blind.open);
        assert_eq!((blind.free_memory_mb, blind.load_1m), (None, None));
    }
}
