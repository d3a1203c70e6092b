//! The cluster files in deploy/ checked offline, with the tools scripts/setup.sh puts in .venv:
//! Kubernetes manifests against the API's schemas (kubernetes-validate, strict), Dockerfiles with
//! hadolint, compose.yaml against the Compose specification's schema (check-jsonschema), and the
//! shell scripts with `bash -n`. Each linter is also shown a broken file, so a linter that
//! accepts anything fails the test. Beyond the schemas: every command line in these files uses
//! flags the real binaries accept, the probes use the coordinator's HTTP endpoints, and the
//! Dockerfiles' build steps are the Makefile's and the README's (read as text: no image is built
//! here).

use cbsweep_tests::{bin, python, root};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Kubernetes versions the manifests must be valid for: the oldest supported here and the newest.
const KUBERNETES: [&str; 2] = ["1.30.0", "1.37.0"];

fn venv_tool(name: &str) -> PathBuf {
    let p = root().join(".venv/bin").join(name);
    assert!(p.is_file(), "{} is missing: run `bash scripts/setup.sh` (make test does)", p.display());
    p
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("command runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Every YAML document of a file, as JSON (PyYAML from .venv, merge keys resolved).
fn yaml(path: &Path) -> Vec<Value> {
    let script = "import json, sys, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))";
    let o = run(Command::new(python()).args(["-c", script]).arg(path));
    assert!(o.status.success(), "{} is not YAML: {}", path.display(), text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn k8s_manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/k8s"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "secret, coordinator, submit and worker manifests: {files:?}");
    files
}

fn kubernetes_validate(version: &str, files: &[PathBuf]) -> Output {
    run(Command::new(venv_tool("kubernetes-validate")).args(["--strict", "--quiet", "-k", version]).args(files))
}

/// `--flag` names a binary's help lists.
fn flags(help_of: &[&str], binary: &str) -> Vec<String> {
    let o = run(Command::new(bin(binary)).args(help_of).arg("--help"));
    assert!(o.status.success(), "{binary} {help_of:?} --help: {}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| w.starts_with("--"))
        .map(|w| w.split(['=', '<']).next().unwrap().to_string())
        .collect()
}

/// Fails unless each `--flag` in `args` is one the command accepts.
fn assert_known_flags(what: &str, args: &[String]) {
    let (binary, help_of): (&str, Vec<&str>) = match args.first().map(String::as_str) {
        Some(sub @ ("coordinator" | "submit" | "status")) => ("cbsweep", vec![sub]),
        Some(other) if other.starts_with("--") => ("cbsweep-worker", vec![]),
        other => panic!("{what}: unexpected command {other:?}"),
    };
    let known = flags(&help_of, binary);
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let flag = a.split('=').next().unwrap();
        assert!(known.iter().any(|k| k == flag), "{what}: {binary} {} does not accept {flag} (known: {known:?})", help_of.join(" "));
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

#[test]
fn kubernetes_manifests_validate_strictly_against_the_api_schemas() {
    let files = k8s_manifests();
    for v in KUBERNETES {
        let o = kubernetes_validate(v, &files);
        assert!(o.status.success(), "kubernetes {v}: {}", text(&o));
    }
    // The validator is live: a misspelt field is refused.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let good = std::fs::read_to_string(root().join("deploy/k8s/coordinator.yaml")).unwrap();
    std::fs::write(&broken, good.replace("readinessProbe:", "readynessProbe:")).unwrap();
    let o = kubernetes_validate(KUBERNETES[1], &[broken]);
    assert!(!o.status.success(), "a misspelt field passed: {}", text(&o));
    // kustomization.yaml lists files that exist.
    let k = &yaml(&root().join("deploy/k8s/kustomization.yaml"))[0];
    for r in strings(&k["resources"]) {
        assert!(root().join("deploy/k8s").join(&r).is_file(), "kustomization.yaml lists a missing {r}");
    }
}

#[test]
fn kubernetes_manifests_probe_the_http_endpoints_and_use_real_flags() {
    let docs: Vec<Value> = k8s_manifests().iter().flat_map(|f| yaml(f)).collect();
    let kind = |k: &str, name: &str| {
        docs.iter().find(|d| d["kind"] == k && d["metadata"]["name"] == name).unwrap_or_else(|| panic!("no {k} {name}")).clone()
    };
    let sts = kind("StatefulSet", "cbsweep-coordinator");
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
    let args = strings(&c["args"]);
    assert!(args.contains(&"--http-listen=0.0.0.0:9090".to_string()) && args.contains(&"--state=/state".to_string()), "{args:?}");
    assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "state", "the state lives on a PVC");
    let svc = kind("Service", "cbsweep-coordinator");
    let ports: Vec<u64> = svc["spec"]["ports"].as_array().unwrap().iter().filter_map(|p| p["port"].as_u64()).collect();
    assert_eq!(ports, [50051, 9090], "gRPC and HTTP");
    let workers = kind("Job", "cbsweep-workers");
    let w = &workers["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(w["resources"]["limits"]["nvidia.com/gpu"], 1, "a GPU per worker");
    assert!(strings(&w["args"]).iter().any(|a| a.starts_with("--coordinator=http://cbsweep-coordinator:50051")));
    // Everything that reads the token reads the Secret.
    assert!(docs.iter().any(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "cbsweep-token"));
    for d in &docs {
        let Some(pod) = d["spec"]["template"]["spec"].as_object() else { continue };
        let name = d["metadata"]["name"].as_str().unwrap();
        let secrets: Vec<&str> = pod["volumes"].as_array().unwrap().iter().filter_map(|v| v["secret"]["secretName"].as_str()).collect();
        assert_eq!(secrets, ["cbsweep-token"], "{name}");
        let sc = &pod["securityContext"];
        assert!(
            sc["runAsUser"] == 65532 && sc["fsGroup"] == sc["runAsGroup"],
            "{name}: the images' uid, and the group that may read the 0440 token: {sc}"
        );
        for c in pod["containers"].as_array().unwrap() {
            assert_known_flags(name, &strings(&c["args"]));
        }
    }
}

#[test]
fn dockerfiles_pass_hadolint() {
    let files = ["Dockerfile.coordinator", "Dockerfile.worker"].map(|f| root().join("deploy/docker").join(f));
    let o = run(Command::new(venv_tool("hadolint")).args(&files));
    assert!(o.status.success(), "{}", text(&o));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("Dockerfile");
    std::fs::write(&bad, "FROM debian\nRUN cd /tmp && make\n").unwrap();
    assert!(!run(Command::new(venv_tool("hadolint")).arg(&bad)).status.success(), "hadolint flags an untagged image and `cd` in RUN");
}

#[test]
fn dockerfiles_build_with_the_makefile_and_the_readmes_steps_and_real_flags() {
    let docker = |f: &str| std::fs::read_to_string(root().join("deploy/docker").join(f)).unwrap();
    let (worker, coordinator) = (docker("Dockerfile.worker"), docker("Dockerfile.coordinator"));
    let makefile = std::fs::read_to_string(root().join("Makefile")).unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    // The worker image runs `make build`: the Makefile's setup (scripts/setup.sh, the pinned
    // torch wheel) and its cargo build, which the README describes.
    assert!(worker.lines().any(|l| l.trim_start().starts_with("RUN make build")), "Dockerfile.worker builds with `make build`");
    let recipe = |target: &str| -> Vec<String> {
        let mut lines = makefile.lines().skip_while(|l| !l.starts_with(&format!("{target}:")));
        let head = lines.next().unwrap_or_else(|| panic!("no `{target}` target in the Makefile")).to_string();
        std::iter::once(head).chain(lines.take_while(|l| l.starts_with('\t')).map(|l| l.trim().to_string())).collect()
    };
    let build = recipe("build");
    assert!(build[0].contains("setup"), "make build runs setup first: {build:?}");
    assert!(recipe("setup").iter().any(|l| l.contains("scripts/setup.sh")), "make setup is scripts/setup.sh");
    assert!(build.iter().any(|l| l.contains("build --release --workspace --bins")), "{build:?}");
    assert!(readme.contains("scripts/setup.sh") && readme.contains("cargo build --release"), "the README describes the same steps");
    // The coordinator image: the README's cargo build for one binary, no torch, no setup.
    let instructions: Vec<&str> = coordinator.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    let cargo: Vec<&&str> = instructions.iter().filter(|l| l.contains("cargo build")).collect();
    assert!(cargo.len() == 1 && cargo[0].contains("cargo build --release") && cargo[0].contains("-p cbsweep-coordinator"), "{cargo:?}");
    assert!(!instructions.iter().any(|l| l.contains("setup.sh") || l.contains("make build")), "the coordinator image needs no libtorch");
    // The builder's toolchain is the workspace's, and the wheel's path matches its Python.
    let cargo_toml = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let rust = cargo_toml.lines().find_map(|l| l.strip_prefix("rust-version = ")).unwrap().trim_matches('"');
    for d in [&worker, &coordinator] {
        assert!(d.contains(&format!("ARG RUST_IMAGE=rust:{rust}-bookworm")), "builder on Rust {rust} (bookworm: Python 3.11)");
    }
    assert!(
        worker.contains(".venv/lib/python3.11/site-packages/torch/lib") && worker.contains("FROM ${CUDA_IMAGE}"),
        "CUDA runtime with the wheel's libraries"
    );
    let requirements = std::fs::read_to_string(root().join("scripts/requirements.txt")).unwrap();
    assert!(requirements.lines().any(|l| l.starts_with("torch==")), "the pinned wheel the worker image gets through setup.sh");
    // Each image's default command uses flags its binary accepts.
    for (d, name) in [(&worker, "Dockerfile.worker"), (&coordinator, "Dockerfile.coordinator")] {
        let cmd = d.lines().find_map(|l| l.strip_prefix("CMD ")).unwrap_or_else(|| panic!("{name} has no CMD"));
        let args: Vec<String> = serde_json::from_str(cmd).unwrap_or_else(|e| panic!("{name}: CMD in exec form: {e}"));
        assert_known_flags(name, &args);
    }
    for f in ["Dockerfile.coordinator.dockerignore", "Dockerfile.worker.dockerignore"] {
        let ignore = docker(f);
        assert!(
            ignore.lines().any(|l| l == "target") && ignore.lines().any(|l| l == ".venv"),
            "{f} keeps build outputs out of the context"
        );
    }
}

#[test]
fn compose_file_follows_the_compose_spec_and_runs_the_real_commands() {
    let compose = root().join("deploy/docker/compose.yaml");
    let check = |f: &Path| run(Command::new(venv_tool("check-jsonschema")).args(["--builtin-schema", "vendor.compose-spec"]).arg(f));
    let o = check(&compose);
    assert!(o.status.success(), "{}", text(&o));
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("compose.yaml");
    std::fs::write(&broken, std::fs::read_to_string(&compose).unwrap().replace("    healthcheck:", "    healthcheck_:")).unwrap();
    assert!(!check(&broken).status.success(), "the schema refuses an unknown service key");

    let c = &yaml(&compose)[0];
    let services = c["services"].as_object().unwrap();
    let mut names: Vec<&str> = services.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["coordinator", "submit", "worker", "worker-gpu"]);
    for (name, s) in services {
        let image = s["image"].as_str().unwrap();
        assert!(image == "cbsweep-coordinator:0.1.0" || image == "cbsweep-worker:0.1.0", "{name}: {image}");
        if let Some(dockerfile) = s["build"]["dockerfile"].as_str() {
            assert!(root().join(dockerfile).is_file(), "{name}: {dockerfile}");
            assert_eq!(s["build"]["context"], "../..", "{name}: the repository root is the context");
        }
        let command = strings(&s["command"]);
        assert_known_flags(name, &command);
        if image.starts_with("cbsweep-worker") {
            assert!(
                command.contains(&"--exit-when-drained".to_string()) && command.contains(&"--token-file".to_string()),
                "{name}: {command:?}"
            );
        }
    }
    assert_eq!(
        services["worker"]["depends_on"]["submit"]["condition"], "service_completed_successfully",
        "workers start once the sweep is in"
    );
    assert_eq!(services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"][0], "gpu");
    assert!(strings(&services["coordinator"]["command"]).contains(&"--http-listen".to_string()));
}

#[test]
fn slurm_and_setup_scripts_are_valid_bash() {
    for f in ["deploy/slurm/worker.sbatch", "deploy/slurm/coordinator.sbatch", "scripts/cluster-setup.sh"] {
        let o = run(Command::new("bash").arg("-n").arg(root().join(f)));
        assert!(o.status.success(), "{f}: {}", text(&o));
    }
    let worker = std::fs::read_to_string(root().join("deploy/slurm/worker.sbatch")).unwrap();
    for line in ["#SBATCH --gres=gpu:1", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120"] {
        assert!(worker.lines().any(|l| l.starts_with(line)), "worker.sbatch: {line}");
    }
}
