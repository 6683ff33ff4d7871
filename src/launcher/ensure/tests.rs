use super::*;

/// A cold path scripted step by step; `log` records what the driver asked for.
#[derive(Default)]
struct Script {
    probes: Vec<Probe<&'static str>>,
    spawns: Vec<Spawned>,
    confirms: Vec<Probe<&'static str>>,
    other_version: bool,
    log: Vec<String>,
}

fn next<T>(queue: &mut Vec<T>, what: &str) -> T {
    assert!(
        !queue.is_empty(),
        "the driver asked for one {what} too many"
    );
    queue.remove(0)
}

impl Steps for Script {
    type Channel = &'static str;

    async fn probe(&mut self, attempt: u32) -> Probe<&'static str> {
        let found = next(&mut self.probes, "probe");
        self.log.push(format!("probe {attempt}: {}", found.name()));
        found
    }
    async fn replace_other_version(&mut self, _: &&'static str, _: Option<&str>) -> Result<bool> {
        self.log.push("version".into());
        Ok(self.other_version)
    }
    async fn lock(&mut self) -> Result<()> {
        self.log.push("lock".into());
        Ok(())
    }
    async fn wait_serving(&mut self, channel: &'static str) -> Result<()> {
        self.log.push(format!("wait serving {channel}"));
        Ok(())
    }
    async fn wait_for_holder(&mut self) {
        self.log.push("wait holder".into());
    }
    fn remove_stale_socket(&mut self) -> Result<()> {
        self.log.push("remove socket".into());
        Ok(())
    }
    async fn spawn(&mut self) -> Result<Spawned> {
        self.log.push("spawn".into());
        Ok(next(&mut self.spawns, "spawn"))
    }
    async fn confirm(&mut self) -> Result<Probe<&'static str>> {
        let found = next(&mut self.confirms, "confirm");
        self.log.push(format!("confirm: {}", found.name()));
        Ok(found)
    }
    fn refusal(&self, probe: Probe<&'static str>) -> Error {
        Error::UnexpectedProbe {
            found: probe.name(),
            socket: "sock".into(),
        }
    }
    fn stopped_after_ready(&self, found: &'static str, attempts: u32) -> Error {
        Error::StoppedAfterReady {
            found,
            attempts,
            log: "log".into(),
        }
    }
}

fn serving(channel: &'static str) -> Probe<&'static str> {
    Probe::Serving {
        channel,
        version: None,
    }
}

const ABSENT: Probe<&'static str> = Probe::Absent {
    stale_socket: false,
};

fn run(script: &mut Script) -> Result<Ensured<&'static str>> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(drive(script))
}

#[test]
fn a_serving_service_is_used_as_it_is_without_the_lock() {
    let mut script = Script {
        probes: vec![serving("running")],
        ..Script::default()
    };
    let found = run(&mut script).unwrap();
    assert_eq!(
        (found.channel, found.outcome),
        ("running", EnsureOutcome::AlreadyRunning)
    );
    assert_eq!(script.log, ["probe 1: serving", "version"]);
}

#[test]
fn nobody_serving_means_one_spawn_under_the_lock_then_confirm() {
    let mut script = Script {
        probes: vec![ABSENT, Probe::Absent { stale_socket: true }],
        spawns: vec![Spawned::Ready],
        confirms: vec![serving("new")],
        ..Script::default()
    };
    let found = run(&mut script).unwrap();
    assert_eq!(
        (found.channel, found.outcome),
        ("new", EnsureOutcome::Started)
    );
    assert_eq!(
        script.log,
        [
            "probe 1: absent",
            "lock",
            "probe 2: stale_socket",
            "remove socket",
            "spawn",
            "confirm: serving"
        ]
    );
}

#[test]
fn a_service_started_meanwhile_by_another_launcher_is_used() {
    let mut script = Script {
        probes: vec![ABSENT, serving("theirs")],
        ..Script::default()
    };
    let found = run(&mut script).unwrap();
    assert_eq!(found.outcome, EnsureOutcome::StartedByOther);
    assert!(
        !script.log.contains(&"spawn".to_string()),
        "{:?}",
        script.log
    );
}

#[test]
fn a_service_of_another_version_with_no_runtime_is_replaced() {
    let mut script = Script {
        probes: vec![serving("old"), ABSENT],
        spawns: vec![Spawned::Ready],
        confirms: vec![serving("new")],
        other_version: true,
        ..Script::default()
    };
    assert_eq!(run(&mut script).unwrap().channel, "new");
}

#[test]
fn a_service_that_keeps_stopping_after_ready_is_named_after_max_attempts() {
    let tries = (MAX_ATTEMPTS - 1) as usize;
    let mut script = Script {
        probes: std::iter::repeat_with(|| ABSENT).take(tries + 1).collect(),
        spawns: std::iter::repeat_with(|| Spawned::Ready)
            .take(tries)
            .collect(),
        confirms: std::iter::repeat_with(|| ABSENT).take(tries).collect(),
        ..Script::default()
    };
    match run(&mut script) {
        Err(Error::StoppedAfterReady {
            attempts, found, ..
        }) => {
            assert_eq!((attempts, found), (MAX_ATTEMPTS, "absent"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(script.log.iter().filter(|l| *l == "spawn").count(), tries);
}

#[test]
fn a_live_service_that_does_not_answer_is_waited_for_once_then_named() {
    let mut script = Script {
        probes: vec![
            Probe::Unanswering { pid: 7 },
            Probe::Unanswering { pid: 7 },
            Probe::Unanswering { pid: 7 },
        ],
        ..Script::default()
    };
    match run(&mut script) {
        Err(Error::UnexpectedProbe { found, .. }) => assert_eq!(found, "unanswering"),
        other => panic!("{other:?}"),
    }
    assert_eq!(script.log.iter().filter(|l| *l == "wait holder").count(), 1);
    assert!(!script.log.contains(&"spawn".to_string()));
}

#[test]
fn an_old_service_still_exiting_is_waited_for_then_the_start_is_tried_again() {
    let mut script = Script {
        probes: vec![ABSENT, ABSENT, ABSENT],
        spawns: vec![
            Spawned::OldServiceExiting { holder: Some(9) },
            Spawned::Ready,
        ],
        confirms: vec![serving("new")],
        ..Script::default()
    };
    assert_eq!(run(&mut script).unwrap().outcome, EnsureOutcome::Started);
    assert_eq!(
        script.log,
        [
            "probe 1: absent",
            "lock",
            "probe 2: absent",
            "spawn",
            "wait holder",
            "probe 3: absent",
            "spawn",
            "confirm: serving"
        ]
    );
}

#[test]
fn a_service_coming_up_by_hand_is_waited_for_and_foreign_sockets_are_refused() {
    let mut script = Script {
        probes: vec![
            Probe::NotServing("hand"),
            Probe::NotServing("hand"),
            serving("hand"),
        ],
        ..Script::default()
    };
    assert_eq!(
        run(&mut script).unwrap().outcome,
        EnsureOutcome::StartedByOther
    );
    assert!(script.log.contains(&"wait serving hand".to_string()));
    let mut foreign = Script {
        probes: vec![Probe::Foreign("http".into())],
        ..Script::default()
    };
    assert!(matches!(
        run(&mut foreign),
        Err(Error::UnexpectedProbe {
            found: "foreign",
            ..
        })
    ));
    assert_eq!(foreign.log, ["probe 1: foreign"]);
}
