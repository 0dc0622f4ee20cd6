//! The systemd backend: agents are `gvm-agent@P.service` units, driven and watched over
//! D-Bus (org.freedesktop.systemd1). `gvmctl start P` is StartUnit and waits for the
//! job's JobRemoved signal; the profile's limits become the unit's MemoryMax, TasksMax
//! and CPUQuota (runtime properties, set just before the start). `systemctl start
//! gvm-agent@P` on its own works as well: the state shown is always read from systemd.

use std::time::Duration;

use futures_util::StreamExt;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::{Connection, Proxy};

const DEST: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

pub fn unit_name(profile: &str) -> String {
    format!("gvm-agent@{profile}.service")
}

/// A connection to systemd's manager.
#[derive(Debug, Clone)]
pub struct Systemd {
    conn: Connection,
}

/// What systemd says about one agent unit.
#[derive(Debug, Clone, Default)]
pub struct UnitState {
    pub active_state: String,
    pub sub_state: String,
    pub main_pid: u32,
    pub memory: Option<u64>,
    pub restarts: u32,
    /// How the main process last ended: systemd's ExecMainCode (a `CLD_*` code, 0 while
    /// it never ended) and ExecMainStatus (the exit status or the signal number).
    pub exec_main_code: i32,
    pub exec_main_status: i32,
    /// CLOCK_REALTIME µs when the unit last became active (0: never).
    pub active_enter_usec: u64,
}

impl Systemd {
    /// Connects to the system bus when systemd is PID 1; `None` otherwise.
    pub async fn connect() -> Option<Systemd> {
        if !std::path::Path::new("/run/systemd/system").is_dir() {
            return None;
        }
        let conn = Connection::system().await.ok()?;
        let s = Systemd { conn };
        // Subscribe so that systemd emits JobRemoved/PropertiesChanged to us.
        let _: () = s.manager().await.ok()?.call("Subscribe", &()).await.ok()?;
        Some(s)
    }

    async fn manager(&self) -> zbus::Result<Proxy<'static>> {
        Proxy::new(&self.conn, DEST, MANAGER_PATH, MANAGER).await
    }

    /// Starts, stops or restarts the unit and waits until systemd finished the job.
    /// Returns the job's result (`done`, `failed`, `canceled`, `timeout`, ...).
    pub async fn act(&self, profile: &str, action: &str) -> zbus::Result<String> {
        let manager = self.manager().await?;
        let mut removed = manager.receive_signal("JobRemoved").await?;
        let method = match action {
            "start" => "StartUnit",
            "stop" => "StopUnit",
            _ => "RestartUnit",
        };
        let job: OwnedObjectPath = manager.call(method, &(unit_name(profile), "replace")).await?;
        let wait = async {
            while let Some(msg) = removed.next().await {
                let Ok((_id, path, _unit, result)) = msg.body().deserialize::<(u32, OwnedObjectPath, String, String)>()
                else {
                    continue;
                };
                if path == job {
                    return result;
                }
            }
            "unknown".to_string()
        };
        Ok(tokio::time::timeout(Duration::from_secs(120), wait).await.unwrap_or_else(|_| "timeout".into()))
    }

    /// Sets the profile's limits as runtime properties of its unit (before a start).
    pub async fn set_limits(&self, profile: &str, agent: &gvm_policy::Agent) -> zbus::Result<()> {
        let mut props: Vec<(&str, Value<'_>)> = Vec::new();
        if let Some(m) = agent.memory_max {
            props.push(("MemoryMax", Value::U64(m)));
        }
        if let Some(t) = agent.tasks_max {
            props.push(("TasksMax", Value::U64(u64::from(t))));
        }
        if let Some(pct) = agent.cpu_quota {
            // CPUQuota=N% is CPUQuotaPerSecUSec = N% of one second.
            props.push(("CPUQuotaPerSecUSec", Value::U64(u64::from(pct) * 10_000)));
        }
        if props.is_empty() {
            return Ok(());
        }
        let manager = self.manager().await?;
        let _: () = manager.call("SetUnitProperties", &(unit_name(profile), true, props)).await?;
        Ok(())
    }

    /// The unit's state; an unknown (never loaded) unit reads as inactive.
    pub async fn state(&self, profile: &str) -> zbus::Result<UnitState> {
        let manager = self.manager().await?;
        let path: OwnedObjectPath = match manager.call("LoadUnit", &(unit_name(profile),)).await {
            Ok(p) => p,
            Err(_) => return Ok(UnitState { active_state: "inactive".into(), ..Default::default() }),
        };
        let unit = Proxy::new(&self.conn, DEST, path.clone(), "org.freedesktop.systemd1.Unit").await?;
        let service = Proxy::new(&self.conn, DEST, path, "org.freedesktop.systemd1.Service").await?;
        let memory: u64 = service.get_property("MemoryCurrent").await.unwrap_or(u64::MAX);
        Ok(UnitState {
            active_state: unit.get_property("ActiveState").await.unwrap_or_default(),
            sub_state: unit.get_property("SubState").await.unwrap_or_default(),
            main_pid: service.get_property("MainPID").await.unwrap_or(0),
            memory: (memory != u64::MAX).then_some(memory),
            restarts: service.get_property("NRestarts").await.unwrap_or(0),
            exec_main_code: service.get_property("ExecMainCode").await.unwrap_or(0),
            exec_main_status: service.get_property("ExecMainStatus").await.unwrap_or(0),
            active_enter_usec: unit.get_property("ActiveEnterTimestamp").await.unwrap_or(0),
        })
    }
}
