"""deploy/ against Kubernetes' schemas, the CLI and itself, with no cluster, scheduler or engine.

- deploy/kubernetes: every manifest validates offline against the Kubernetes schemas
  (kubernetes-validate, strict: an unknown field fails) for the oldest supported release and the
  newest shipped; the names the objects use for each other resolve (Services select pods that
  exist, on ports those pods open; workers reach the proxy's Service on its port; the proxy and
  the dashboard reach PostgreSQL's; Secrets, claims and ConfigMaps exist or are user-created and
  documented); every pod runs as non-root with resources; every vae-tune command parses with the
  real CLI.
- deploy/slurm: the #SBATCH directives, `bash -n` (and shellcheck where installed), and array
  tasks run for real with the environment SLURM gives them: a worker joining one study created
  from the shipped quickstart spec (made tiny) finishes its exact budget; with nothing set, a
  pool worker serves the default journal file in $HOME; SIGTERM reaches the worker (the script
  execs it), which hands its trial back.
- deploy/compose/proxy.yml: the proxy override fits docker-compose.yml (PyYAML, and
  `docker compose config` where installed).
- docs/deploy-*.md: the files they name exist.

Tests not marked `integration` read files only (the fast tier).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from vae_tune.cli import app

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
SBATCH = ROOT / "deploy" / "slurm" / "vae-tune-array.sbatch"
PROXY_COMPOSE = ROOT / "deploy" / "compose" / "proxy.yml"
DOCS = {name: ROOT / "docs" / f"deploy-{name}.md" for name in ("kubernetes", "slurm", "compose")}


# The oldest Kubernetes release the manifests target (indexed Jobs with backoffLimitPerIndex and
# podFailurePolicy FailIndex, elastic indexed Jobs) and the newest whose schemas are shipped.
K8S_OLDEST = "1.30"
# Files applied on their own (`kubectl create|apply -f`), not by `kubectl apply -k`: each run of a
# Job is a new object, and the workers start after a study is submitted.
JOBS = {"workers-job.yaml", "submit-job.yaml"}
# Created by the user with the command the docs give; never committed.
USER_SECRETS = {"vae-tune-postgres": {"password"}}
# What libpq (psycopg) reads: the manifests pass the database password this way, not in URLs.
LIBPQ_VARS = {"PGPASSWORD"}
# What the official postgres image reads (https://hub.docker.com/_/postgres).
POSTGRES_IMAGE_VARS = {
    "POSTGRES_PASSWORD",
    "POSTGRES_USER",
    "POSTGRES_DB",
    "POSTGRES_INITDB_ARGS",
    "POSTGRES_INITDB_WALDIR",
    "POSTGRES_HOST_AUTH_METHOD",
    "PGDATA",
}
WORKLOADS = {"Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet", "Pod"}
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


# ---------------------------------------------------------------------------------------------
# reading the files


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_objects() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) of every document of every manifest."""
    return [
        (path.name, doc)
        for path in manifest_files()
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def name_of(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return meta.get("name") or meta["generateName"]


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {name_of(o): o for _, o in k8s_objects() if o["kind"] == kind}


def pod_template(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] == "Pod":
        return obj
    if obj["kind"] in WORKLOADS:
        return obj["spec"]["template"]
    return None


def workloads() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(kind/name, object, pod template) of every workload."""
    found = []
    for _, obj in k8s_objects():
        template = pod_template(obj)
        if template is not None:
            found.append((f"{obj['kind']}/{name_of(obj)}", obj, template))
    return found


def containers(pod: dict[str, Any], init: bool = True) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return list(spec.get("containers", [])) + (list(spec.get("initContainers", [])) if init else [])


def argv(container: dict[str, Any]) -> list[str]:
    return [str(a) for a in container.get("command", []) + container.get("args", [])]


def option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def vae_tune_containers() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{where}/{c['name']}", c)
        for where, _, pod in workloads()
        for c in containers(pod)
        if argv(c)[:1] == ["vae-tune"]
    ]


def component(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The workload and pod template of a component label value."""
    (match,) = [
        (obj, pod)
        for _, obj, pod in workloads()
        if pod["metadata"]["labels"].get("app.kubernetes.io/component") == name
    ]
    return match


def service_target(host: str, port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Service named `host` with `port`, and the container port it sends to (asserted to
    exist in a pod the Service selects): (container, container port)."""
    services = objects("Service")
    assert host in services, f"no Service {host!r} in deploy/kubernetes (have {sorted(services)})"
    service = services[host]
    (svc_port,) = [p for p in service["spec"]["ports"] if p["port"] == port] or [None]
    assert svc_port is not None, f"Service {host} has no port {port}"
    target = svc_port.get("targetPort", port)
    selector = service["spec"]["selector"]
    hits = []
    for _, _, pod in workloads():
        if selector.items() <= pod["metadata"]["labels"].items():
            for c in containers(pod, init=False):
                for p in c.get("ports", []):
                    if target in (p.get("name"), p["containerPort"]):
                        hits.append((c, p))
    assert hits, f"Service {host}:{port} -> {target!r}: no selected pod opens that port"
    return hits[0]


def cli_group() -> Any:
    return typer.main.get_command(app)


def code_env_vars() -> set[str]:
    """Environment variables vae-tune reads: typer `envvar=` options and os.environ look-ups."""
    found: set[str] = set()
    for command in cli_group().commands.values():
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            if envvar:
                found.update([envvar] if isinstance(envvar, str) else envvar)
    pattern = re.compile(r"os\.environ(?:\.get\(|\[)\s*['\"]([A-Z0-9_]+)['\"]")
    for path in (ROOT / "vae_tune").rglob("*.py"):
        found.update(pattern.findall(path.read_text()))
    return found


def parse_cli(args: list[str], where: str) -> dict[str, Any]:
    """Parse `vae-tune ...` strictly with the real CLI: an unknown command or option, a missing
    value or a bad type fails."""
    assert args[0] == "vae-tune", where
    group = cli_group()
    assert args[1] in group.commands, f"{where}: vae-tune has no command {args[1]!r}"
    try:
        ctx = group.commands[args[1]].make_context(f"vae-tune {args[1]}", args[2:])
    except Exception as err:  # click's exceptions (typer vendors click in recent versions)
        raise AssertionError(f"{where}: {' '.join(args)}: {err}") from err
    return ctx.params


def kv_utils() -> Any:
    try:
        import kubernetes_validate.utils as utils
    except ImportError:  # pragma: no cover - the dev extra has it
        pytest.fail("kubernetes-validate is missing: pip install -e '.[dev]'")
    return utils


def k8s_versions() -> list[str]:
    utils = kv_utils()
    shipped = utils.all_versions()
    oldest = [v for v in shipped if utils.major_minor(v) == K8S_OLDEST]
    assert oldest, f"kubernetes-validate {shipped[0]}..{shipped[-1]} lacks {K8S_OLDEST}"
    return [K8S_OLDEST, utils.major_minor(utils.latest_version())]


# ---------------------------------------------------------------------------------------------
# Kubernetes: schemas


@pytest.mark.integration
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_every_manifest_validates_against_the_kubernetes_schemas_strictly(path: Path):
    utils = kv_utils()
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, path
    for doc in docs:
        for version in k8s_versions():
            # strict: additionalProperties false everywhere, so a misspelt field fails
            utils.validate(doc, version, strict=True)


def _rename(tree: dict[str, Any], path: list[Any], old: str, new: str) -> None:
    node: Any = tree
    for key in path:
        node = node[key]
    node[new] = node.pop(old)


@pytest.mark.parametrize(
    ("file", "kind", "path", "old", "new"),
    [
        (
            "workers-job.yaml",
            "Job",
            ["spec", "template", "spec"],
            "terminationGracePeriodSeconds",
            "terminationGracePeriodSecond",
        ),
        ("workers-job.yaml", "Job", ["spec"], "completionMode", "completionmode"),
        (
            "storage-proxy.yaml",
            "Deployment",
            ["spec", "template", "spec", "containers", 0],
            "readinessProbe",
            "readynessProbe",
        ),
        ("postgres.yaml", "StatefulSet", ["spec"], "serviceName", "servicename"),
        ("dashboard.yaml", "Service", ["spec", "ports", 0], "targetPort", "target_port"),
    ],
)
@pytest.mark.integration
def test_a_misspelt_field_is_rejected(file, kind, path, old, new):
    utils = kv_utils()
    (doc,) = [d for d in yaml.safe_load_all((K8S / file).read_text()) if d and d["kind"] == kind]
    utils.validate(doc, K8S_OLDEST, strict=True)
    bad = copy.deepcopy(doc)
    _rename(bad, path, old, new)
    with pytest.raises(utils.ValidationError, match=new):
        utils.validate(bad, K8S_OLDEST, strict=True)


def test_the_validator_command_rejects_a_typo_in_a_file(tmp_path: Path):
    """The same through kubernetes-validate's command line, on a mutated copy of a file."""
    good = (K8S / "workers-job.yaml").read_text()
    bad = good.replace("parallelism: 4", "parallelism: four").replace(
        "restartPolicy:", "restartpolicy:"
    )
    assert bad != good
    cmd = [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", K8S_OLDEST]
    (tmp_path / "good.yaml").write_text(good)
    (tmp_path / "bad.yaml").write_text(bad)
    ok = subprocess.run([*cmd, "good.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    out = subprocess.run([*cmd, "bad.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode != 0 and "did not validate" in out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------
# Kubernetes: the objects fit together


def test_the_kustomization_applies_the_service_and_the_jobs_go_on_their_own():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"].startswith("kustomize.config.k8s.io/")
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    for name in resources:
        assert (K8S / name).is_file(), name
    files = {p.name for p in manifest_files()}
    assert set(resources) | JOBS == files, "a manifest is neither applied by -k nor a Job"
    assert not set(resources) & JOBS
    doc = DOCS["kubernetes"].read_text()
    assert "kubectl apply -k deploy/kubernetes" in doc
    assert "kubectl apply -f deploy/kubernetes/workers-job.yaml" in doc
    assert "kubectl create -f deploy/kubernetes/submit-job.yaml" in doc
    # `kubectl apply` needs a name; the submit Job is a template for `kubectl create`
    assert "generateName" in objects("Job")["vae-tune-submit-"]["metadata"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl here (kustomize build)")
def test_kustomize_builds_the_directory():
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    built = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out.stdout) if d}
    resources = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    expected = {
        (d["kind"], d["metadata"]["name"])
        for name in resources
        for d in yaml.safe_load_all((K8S / name).read_text())
        if d
    }
    assert built == expected


def test_labels_are_consistent_and_selectors_match_their_pods():
    for file, obj in k8s_objects():
        labels = obj["metadata"]["labels"]
        where = f"{file}: {obj['kind']}/{name_of(obj)}"
        assert labels["app.kubernetes.io/name"] == "vae-tune", where
        assert labels["app.kubernetes.io/part-of"] == "vae-tune", where
        assert labels.get("app.kubernetes.io/component"), where
        assert name_of(obj).startswith("vae-tune-"), where
        template = pod_template(obj)
        if template is not None:
            assert template["metadata"]["labels"] == labels, f"{where}: pod labels differ"
            selector = obj["spec"].get("selector", {}).get("matchLabels")
            if obj["kind"] != "Job":  # a Job's selector is generated
                assert selector and selector.items() <= labels.items(), where
            else:
                assert selector is None, f"{where}: let the Job controller make the selector"
    components = [
        pod["metadata"]["labels"]["app.kubernetes.io/component"] for _, _, pod in workloads()
    ]
    assert len(components) == len(set(components)), "two workloads share a component label"


def test_every_service_selects_pods_that_exist_on_ports_they_open():
    services = objects("Service")
    assert set(services) == {"vae-tune-postgres", "vae-tune-proxy", "vae-tune-dashboard"}
    for name, service in services.items():
        for port in service["spec"]["ports"]:
            service_target(name, port["port"])
    (postgres,) = objects("StatefulSet").values()
    governing = services[postgres["spec"]["serviceName"]]
    assert governing["spec"].get("clusterIP") == "None", "a StatefulSet's Service is headless"


def _grpc(url: str) -> tuple[str, int]:
    m = re.fullmatch(r"grpc://([a-z0-9.-]+):(\d+)", url)
    assert m, f"not a grpc://HOST:PORT storage URL: {url}"
    return m.group(1), int(m.group(2))


def test_the_workers_are_an_indexed_job_that_reaches_the_storage_proxy():
    job, pod = component("worker")
    assert job["kind"] == "Job" and name_of(job) == "vae-tune-workers"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    # elastic indexed Job: scaled by patching both together
    assert spec["parallelism"] == spec["completions"] >= 1
    assert pod["spec"]["restartPolicy"] == "Never"  # backoffLimitPerIndex and podFailurePolicy
    assert spec["backoffLimitPerIndex"] >= 1
    rules = spec["podFailurePolicy"]["rules"]
    assert {
        "action": "FailIndex",
        "onExitCodes": {"containerName": "worker", "operator": "In", "values": [2]},
    } in rules  # vae-tune's exit code for bad input: no retry helps
    # SIGTERM hands the running trial back within a batch; leave time for a slow one
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 60

    (worker,) = pod["spec"]["containers"]
    args = argv(worker)
    assert args[:3] == ["vae-tune", "worker", "--all"]
    host, port = _grpc(option(args, "--storage"))
    proxy, proxy_port = service_target(host, port)
    proxy_args = argv(proxy)
    assert proxy_args[:2] == ["vae-tune", "storage-proxy"]
    assert option(proxy_args, "--host") == "0.0.0.0"
    assert int(option(proxy_args, "--port")) == proxy_port["containerPort"]
    _, proxy_pod = component("storage-proxy")
    (proxy_container,) = proxy_pod["spec"]["containers"]
    assert proxy_container["readinessProbe"]["tcpSocket"]["port"] in (
        proxy_port.get("name"),
        proxy_port["containerPort"],
    )

    # the init container waits for the same Service
    (wait,) = pod["spec"]["initContainers"]
    assert f'("{host}", {port})' in " ".join(argv(wait))

    # the submit example writes through the same proxy
    _, submit_pod = component("submit")
    (submit,) = submit_pod["spec"]["containers"]
    assert argv(submit)[:2] == ["vae-tune", "submit"]
    assert _grpc(option(argv(submit), "--storage")) == (host, port)

    # artifacts: one ReadWriteMany claim, mounted where VAE_TUNE_ARTIFACTS says
    env = {e["name"]: e for e in worker["env"]}
    (mount,) = worker["volumeMounts"]
    assert env["VAE_TUNE_ARTIFACTS"]["value"] == mount["mountPath"]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    claim = objects("PersistentVolumeClaim")[volume["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    # torch threads follow the CPU limit
    threads = env["VAE_TUNE_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert threads == {"containerName": "worker", "resource": "limits.cpu", "divisor": "1"}


def test_the_proxy_and_the_dashboard_reach_postgres_without_a_password_in_the_url():
    (postgres,) = objects("StatefulSet").values()
    (pg,) = postgres["spec"]["template"]["spec"]["containers"]
    pg_env = {e["name"]: e for e in pg["env"]}
    secret = pg_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    for name in ("storage-proxy", "dashboard"):
        _, pod = component(name)
        (c,) = pod["spec"]["containers"]
        url = option(argv(c), "--storage")
        m = re.fullmatch(r"postgresql\+psycopg://([^:@/]+)@([a-z0-9.-]+):(\d+)/(\w+)", url)
        assert m, f"{name}: {url} (no password in the URL: libpq reads PGPASSWORD)"
        user, host, port, db = m.groups()
        assert user == pg_env["POSTGRES_USER"]["value"] and db == pg_env["POSTGRES_DB"]["value"]
        target, _ = service_target(host, int(port))
        assert target == pg
        env = {e["name"]: e for e in c["env"]}
        assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == secret


def _references(pod: dict[str, Any]) -> Iterator[tuple[str, str, str | None, bool]]:
    """(kind, name, key, optional) of every Secret, ConfigMap and claim a pod uses."""
    spec = pod["spec"]
    for c in containers(pod):
        for e in c.get("env", []):
            for kind, ref in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                r = e.get("valueFrom", {}).get(ref)
                if r:
                    yield kind, r["name"], r["key"], r.get("optional", False)
        for e in c.get("envFrom", []):
            for kind, ref in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if ref in e:
                    yield kind, e[ref]["name"], None, e[ref].get("optional", False)
    for v in spec.get("volumes", []):
        if "secret" in v:
            yield "Secret", v["secret"]["secretName"], None, v["secret"].get("optional", False)
        if "configMap" in v:
            yield "ConfigMap", v["configMap"]["name"], None, v["configMap"].get("optional", False)
        if "persistentVolumeClaim" in v:
            yield "PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"], None, False
        assert "hostPath" not in v, "no hostPath volumes"


def test_secrets_claims_and_config_maps_exist_or_are_created_by_the_user_as_documented():
    doc = DOCS["kubernetes"].read_text()
    assert not objects("Secret"), "no Secret is committed: the user creates it"
    claims = set(objects("PersistentVolumeClaim"))
    used_secrets: dict[str, set[str]] = {}
    for where, obj, pod in workloads():
        templates = {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
        for c in containers(pod):
            for m in c.get("volumeMounts", []):
                assert m["name"] in {v["name"] for v in pod["spec"].get("volumes", [])} | templates
        for kind, name, key, optional in _references(pod):
            if kind == "PersistentVolumeClaim":
                assert name in claims, f"{where}: claim {name} is not in deploy/kubernetes"
            elif kind == "Secret":
                assert name in USER_SECRETS and key in USER_SECRETS[name], f"{where}: {name}"
                used_secrets.setdefault(name, set()).add(key)
            elif not optional:
                assert f"kubectl create configmap {name}" in doc, f"{where}: {name}"
    assert used_secrets == USER_SECRETS
    for name, keys in USER_SECRETS.items():
        for key in keys:
            command = f"kubectl create secret generic {name} --from-literal={key}="
            assert command in doc, f"docs/deploy-kubernetes.md lacks `{command}...`"
            assert command in (K8S / "postgres.yaml").read_text()


def test_every_pod_runs_as_non_root_with_resources():
    for where, _, pod in workloads():
        sc = pod["spec"]["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, where
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
        for c in containers(pod):
            name = f"{where}/{c['name']}"
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, name
            assert csc["capabilities"]["drop"] == ["ALL"], name
            assert not csc.get("privileged"), name
            resources = c["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name
            image = c["image"]
            if image.startswith("vae-tune"):
                assert image == "vae-tune:latest", name
                assert c["imagePullPolicy"] == "IfNotPresent", name  # a locally loaded image
                assert sc["runAsUser"] == 1000, f"{name}: the image's user is uid 1000"
            else:
                tag = image.rpartition(":")[2]
                assert ":" in image and tag != "latest", f"{name}: pin {image}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--uid 1000" in dockerfile and "USER tuner" in dockerfile


@pytest.mark.parametrize(
    ("where", "container"), vae_tune_containers(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_vae_tune_command_in_the_manifests_parses_and_its_env_is_read(where, container):
    known = code_env_vars() | LIBPQ_VARS
    for e in container.get("env", []):
        assert e["name"] in known, f"{where} sets {e['name']}, which nothing reads"
    params = parse_cli(argv(container), where)
    if "host" in params:
        assert params["host"] == "0.0.0.0", where


def test_the_postgres_container_sets_only_what_the_image_reads():
    (postgres,) = objects("StatefulSet").values()
    for c in postgres["spec"]["template"]["spec"]["containers"]:
        assert {e["name"] for e in c["env"]} <= POSTGRES_IMAGE_VARS


# ---------------------------------------------------------------------------------------------
# SLURM


def sbatch_directives() -> dict[str, str]:
    """The #SBATCH options sbatch reads: those before the first command of the script."""
    found: dict[str, str] = {}
    for line in SBATCH.read_text().splitlines()[1:]:
        if line.startswith("#SBATCH"):
            key, _, value = line.removeprefix("#SBATCH").strip().partition("=")
            found[key] = value.split("#")[0].strip()
        elif line.strip() and not line.startswith("#"):
            break
    return found


def test_the_sbatch_directives():
    assert SBATCH.read_text().startswith("#!/bin/bash\n")
    assert os.access(SBATCH, os.X_OK)
    d = sbatch_directives()
    assert re.fullmatch(r"0-\d+(%\d+)?", d["--array"]), d["--array"]
    assert int(d["--cpus-per-task"]) >= 1
    assert re.fullmatch(r"\d+(-\d+)?(:\d+){0,2}", d["--time"])
    assert "%A" in d["--output"] and "%a" in d["--output"], "one log per array task"
    # SIGTERM to the batch shell (B:), which the worker replaces (exec), a minute ahead
    m = re.fullmatch(r"B:(TERM|15)@(\d+)", d["--signal"])
    assert m and int(m.group(2)) >= 30, d["--signal"]
    assert "--requeue" in d
    text = SBATCH.read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    for line in lines:
        if re.search(r"\bvae-tune worker\b", line):
            assert line.lstrip().startswith("exec "), line
    out = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # the defaults the docs state
    assert 'root="${VAE_TUNE_ROOT:-$HOME/vae-tune}"' in text
    assert "journal://$root/studies.journal" in text


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="no shellcheck here")
def test_shellcheck_finds_nothing_in_the_sbatch_script():
    out = subprocess.run(["shellcheck", str(SBATCH)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def tiny_quickstart(folder: Path, epochs: int = 1, n_trials: int = 2, subset: int = 300) -> Path:
    """The shipped quickstart spec, made tiny: a fixed small MLP on 300 digits."""
    from vae_tune.tuning.spec import read_spec

    spec, _ = read_spec("quickstart")
    spec["dataset"]["subset"] = subset
    spec["search_space"].update(
        architecture="mlp", batch_size=64, mlp={"hidden_dim": 32, "depth": 1}
    )
    spec["training"].update(epochs=epochs, device="cpu", threads=1, precision="fp32", iw_samples=0)
    spec["sampler"] = {"name": "random"}
    spec["pruner"] = {"name": "none"}
    spec["budget"] = {"n_trials": n_trials}
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def slurm_env(tmp_path: Path, submit_dir: Path, **extra: str) -> dict[str, str]:
    """What SLURM sets for array task 0 of job 4242 with 1 CPU, started from `submit_dir`;
    HOME is a temporary folder, so the script's defaults land there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "VAE_TUNE_"))}
    env.update(
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        HOME=str(tmp_path / "home"),
        SLURM_JOB_ID="4243",
        SLURM_ARRAY_JOB_ID="4242",
        SLURM_ARRAY_TASK_ID="0",
        SLURM_ARRAY_TASK_COUNT="1",
        SLURM_ARRAY_TASK_MIN="0",
        SLURM_ARRAY_TASK_MAX="0",
        SLURM_CPUS_PER_TASK="1",
        SLURM_JOB_NAME="vae-tune",
        SLURM_SUBMIT_DIR=str(submit_dir),
        SLURM_SUBMIT_HOST=socket.gethostname(),
        SLURMD_NODENAME=socket.gethostname(),
        VAE_TUNE_CACHE=os.environ.get("VAE_TUNE_CACHE", str(tmp_path / "cache")),
    )
    env.update(extra)
    return env


def _trials(url: str, name: str) -> list[Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=name, storage=url).trials
    except KeyError:  # not created yet
        return []


@pytest.mark.integration
def test_one_array_task_runs_a_worker_on_the_quickstart_spec(tmp_path: Path):
    import optuna

    submit_dir = tmp_path / "submit"
    submit_dir.mkdir()
    tiny_quickstart(submit_dir, epochs=1, n_trials=2)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    env = slurm_env(
        tmp_path,
        submit_dir,
        VAE_TUNE_STORAGE=url,
        VAE_TUNE_STUDY_NAME="s",
        VAE_TUNE_SPEC="tiny.yaml",  # relative to the submit folder, as sbatch users write it
    )
    elsewhere = tmp_path / "node"  # SLURM starts the script in the submit folder; not relied on
    elsewhere.mkdir()
    out = subprocess.run(
        ["bash", str(SBATCH)], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    states = [t.state for t in _trials(url, "s")]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2, out.stdout + out.stderr
    root = tmp_path / "home" / "vae-tune"  # $HOME/vae-tune, the default
    assert (root / "tasks" / "4242_0").is_dir()
    assert any((root / "artifacts").iterdir()), "the trials' artifacts go to the shared folder"
    assert "1 thread(s)" in out.stdout  # SLURM_CPUS_PER_TASK
    assert "SQLite on a shared file system is not supported" in out.stderr


@pytest.mark.integration
def test_by_default_a_task_serves_every_study_of_the_journal_in_home(tmp_path: Path):
    """No VAE_TUNE_STORAGE and no study name: `worker --all` on the default journal file,
    which `vae-tune submit` fed."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    submit_dir = tmp_path / "submit"
    submit_dir.mkdir()
    spec = tiny_quickstart(submit_dir, epochs=1, n_trials=1)
    journal = tmp_path / "home" / "vae-tune" / "studies.journal"
    journal.parent.mkdir(parents=True)
    env = slurm_env(tmp_path, submit_dir)
    submit = subprocess.run(
        ["vae-tune", "submit", str(spec), "--storage", f"journal://{journal}", "--study-name", "p"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submit.returncode == 0, submit.stdout + submit.stderr
    out = subprocess.run(
        ["bash", str(SBATCH)], cwd=submit_dir, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    backend = JournalFileBackend(str(journal), lock_obj=JournalFileOpenLock(str(journal)))
    study = optuna.load_study(study_name="p", storage=optuna.storages.JournalStorage(backend))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE], out.stdout


@pytest.mark.integration
def test_sigterm_reaches_the_worker_and_it_hands_the_trial_back(tmp_path: Path):
    """SLURM signals the batch shell (--signal=B:TERM): the script execs the worker, so the
    worker itself gets SIGTERM and leaves no trial RUNNING."""
    import optuna

    submit_dir = tmp_path / "submit"
    submit_dir.mkdir()
    tiny_quickstart(submit_dir, epochs=500, n_trials=1, subset=1000)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    env = slurm_env(
        tmp_path,
        submit_dir,
        VAE_TUNE_STORAGE=url,
        VAE_TUNE_STUDY_NAME="s",
        VAE_TUNE_SPEC=str(submit_dir / "tiny.yaml"),
    )
    proc = subprocess.Popen(
        ["bash", str(SBATCH)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        running = False
        while time.monotonic() < deadline and proc.poll() is None:
            if any(t.state == optuna.trial.TrialState.RUNNING for t in _trials(url, "s")):
                running = True
                break
            time.sleep(0.3)
        assert running, "no trial started"
        if sys.platform == "linux":
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
            assert any(b"vae-tune" in a for a in cmdline) and b"worker" in cmdline, (
                f"the script's process is not the worker (no exec?): {cmdline}"
            )
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # 0 if the trial finished first; 130 or 143 (SIGTERM) after handing it back
    assert proc.returncode in (0, 130, 128 + signal.SIGTERM), output
    trials = _trials(url, "s")
    states = sorted(t.state.name for t in trials)
    assert "RUNNING" not in states, output
    if proc.returncode != 0:  # handed back: failed, and queued again to resume
        assert states == ["FAIL", "WAITING"], (states, output)


# ---------------------------------------------------------------------------------------------
# docker compose


def _compose(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def test_the_proxy_override_fits_docker_compose_yml():
    base = _compose(ROOT / "docker-compose.yml")["services"]
    override = _compose(PROXY_COMPOSE)["services"]
    assert set(override) == {"storage-proxy", "worker"}
    proxy = override["storage-proxy"]
    assert (proxy["build"], proxy["image"]) == (base["worker"]["build"], base["worker"]["image"])
    # the proxy opens the same database as the base file's services, password from .env
    assert (
        proxy["environment"]["VAE_TUNE_STORAGE"]
        == base["worker"]["environment"]["VAE_TUNE_STORAGE"]
    )
    assert proxy["depends_on"]["postgres"]["condition"] == "service_healthy"
    args = _command(proxy)
    assert args[:2] == ["vae-tune", "storage-proxy"]
    port = option(args, "--port")
    assert option(args, "--host") == "0.0.0.0" and port
    assert f"{port}), 2)" in " ".join(proxy["healthcheck"]["test"]) and port == "13000"
    worker = override["worker"]
    assert worker["environment"] == {"VAE_TUNE_STORAGE": f"grpc://storage-proxy:{port}"}
    assert worker["depends_on"]["storage-proxy"]["condition"] == "service_healthy"
    # `--scale worker=N` still works: nothing fixes a worker's name or host port
    assert "container_name" not in worker and "ports" not in worker
    assert "ports" not in proxy and "container_name" not in proxy
    known = code_env_vars() | POSTGRES_IMAGE_VARS
    for var in VAR.findall(PROXY_COMPOSE.read_text()):
        assert var[0] in known, var
    for service in override.values():
        for key in service.get("environment", {}):
            assert key in code_env_vars(), key


def test_the_proxy_command_in_compose_parses():
    proxy = _compose(PROXY_COMPOSE)["services"]["storage-proxy"]
    params = parse_cli(_command(proxy), "deploy/compose/proxy.yml: storage-proxy")
    assert params["port"] == 13000


def _compose_cli() -> list[str] | None:
    """`docker compose` (v2), else the standalone `docker-compose`; None without either."""
    if shutil.which("docker") is not None:
        if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose") is not None:
        return ["docker-compose"]
    return None


@pytest.mark.skipif(
    _compose_cli() is None,
    reason="no `docker compose` here (the checks above parse the files with PyYAML instead)",
)
def test_docker_compose_config_merges_the_proxy_override():
    env = {"POSTGRES_PASSWORD": "x", "PATH": os.environ["PATH"]}
    files = ["-f", "docker-compose.yml", "-f", str(PROXY_COMPOSE.relative_to(ROOT))]
    out = subprocess.run(
        [*_compose_cli(), *files, "config"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    merged = yaml.safe_load(out.stdout)["services"]
    assert set(merged) == {"postgres", "worker", "dashboard", "storage-proxy"}
    assert merged["worker"]["environment"]["VAE_TUNE_STORAGE"] == "grpc://storage-proxy:13000"
    assert merged["worker"]["environment"]["VAE_TUNE_ARTIFACTS"] == "/artifacts"  # kept
    assert set(merged["worker"]["depends_on"]) == {"postgres", "storage-proxy"}
    assert merged["dashboard"]["environment"]["VAE_TUNE_STORAGE"].startswith("postgresql")
    # the override's build context is the repository (paths follow the first file)
    assert Path(merged["storage-proxy"]["build"]["context"]) == ROOT


# ---------------------------------------------------------------------------------------------
# the docs


@pytest.mark.parametrize("name", sorted(DOCS))
def test_the_deploy_pages_name_files_that_exist(name: str):
    text = DOCS[name].read_text()
    files = r"(?<![\w/.-])((?:deploy/(?:kubernetes|slurm|compose)|docs|bench)(?:/[\w.-]*\w)*)"
    for path in set(re.findall(files, text)):
        if path == "bench/scale.py":  # the scaling benchmark (issue 24), named for numbers
            continue
        assert (ROOT / path).exists(), f"{DOCS[name].name} names {path}, which does not exist"
    for path in re.findall(r"(docker-compose[\w.-]*\.yml)", text):
        assert (ROOT / path).exists(), path
    assert "bench/scale.py" in text, "what a worker costs: point at the benchmark"
