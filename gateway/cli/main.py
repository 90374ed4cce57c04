"""The `localai` command."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from gateway.app.machine import on_this_machine
from gateway.config.schema import DEFAULT_CONFIG_PATH, LOCAL_HOST, Config, ConfigError, ManagedModel
from gateway.plan.document import full_plan
from gateway.plan.placement import Placement, ServerPlan, placement, placements, server_plan
from gateway.plan.validate import load_config

if TYPE_CHECKING:
    from gateway.lifecycle.units import SystemdUnits

TINYMODEL_SCRIPT = Path(__file__).resolve().parent.parent / "vllm_venv" / "tinymodel.py"


def _die(message: str, code: int = 2) -> NoReturn:
    from gateway.base.observability import writes_to_journal

    # Under systemd each line is a journal entry of its own: mark every one an error (<3>).
    prefix = "<3>" if writes_to_journal(sys.stderr) else ""
    print("\n".join(prefix + line for line in f"localai: {message}".splitlines()), file=sys.stderr)
    raise SystemExit(code)


def _load(args) -> Config:
    try:
        return on_this_machine(load_config(args.config))
    except ConfigError as exc:
        _die(f"invalid config\n{exc}")


def _managed(cfg: Config, name: str) -> ManagedModel:
    try:
        model = cfg.model(name)
    except KeyError:
        _die(f"{cfg.source}: no model named '{name}' (models: {', '.join(m.name for m in cfg.models)})")
    if not isinstance(model, ManagedModel):
        _die(f"{cfg.source}: model '{name}' is external ({model.url}); nothing to start")
    return model


def _unit_plan(cfg: Config, unit: str) -> tuple[Placement, ServerPlan]:
    """The placement a unit instance name stands for (NAME, NAME.1, NAME.node1: see plan.py)."""
    try:
        where = placement(cfg, unit)
    except KeyError:
        if unit in (m.name for m in cfg.models):
            _managed(cfg, unit)  # an external model says so
        _die(f"{cfg.source}: no server named '{unit}' in the plan "
             f"(servers: {', '.join(p.unit for p in placements(cfg))})")
    return where, server_plan(_managed(cfg, where.model), cfg.vllm, where)


def _here(cfg: Config, hosts: list[str] | None) -> list[Placement]:
    """The placements `localai up` starts on this machine: every one when the config names no
    hosts, else those of the hosts given by --host (default: the one named "local")."""
    if cfg.hosts is None:
        if hosts and hosts != [LOCAL_HOST]:
            _die(f"{cfg.source}: has no 'hosts:' list; its only host is '{LOCAL_HOST}'")
        return placements(cfg)
    wanted = hosts or [LOCAL_HOST]
    names = [h.name for h in cfg.hosts]
    unknown = [h for h in wanted if h not in names]
    if unknown:
        _die(f"{cfg.source}: no host named {', '.join(unknown)} (hosts: {', '.join(names)}); "
             "say which host this machine is with --host NAME")
    return [p for p in placements(cfg) if p.host in wanted]


def _check_vllm_python(cfg: Config) -> None:
    if cfg.managed_models and not os.access(cfg.vllm.python, os.X_OK):
        _die(f"{cfg.source}: vllm.python: {cfg.vllm.python} is not an executable; "
             "install vLLM into its venv first (see README: 'make vllm')")


def _run_loop(main) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main)
    else:
        uvloop.run(main)


async def _until_signalled(run, app) -> None:
    """Run until SIGINT or SIGTERM; SIGHUP reloads the config, keys and WebUI (systemctl reload)."""
    from gateway.app.reload import RELOADER

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app[RELOADER].reload)
    await run(stop)


def _create_app(cfg: Config, units: SystemdUnits | None = None):
    from gateway.app.factory import create_app
    from gateway.app.tls import TlsError, load_context

    if cfg.gateway.tls is not None:  # before anything starts: serve() loads it again
        try:
            load_context(cfg.gateway.tls)
        except TlsError as exc:
            _die(f"{cfg.source}: {exc}")
    try:
        return create_app(cfg, units=units)
    except ConfigError as exc:  # the API key file or $LOCALAI_API_KEY
        _die(f"invalid API keys\n{exc}")


def cmd_gateway(args) -> int:
    from gateway.app.runtime import announced
    from gateway.app.server import serve
    from gateway.base.observability import setup_logging

    cfg = _load(args)
    setup_logging(cfg.gateway.log_level)
    units = None
    if args.units:
        from gateway.lifecycle.units import SystemdUnits

        # Without hosts: every server is on this one machine. With them, a host they do not list
        # runs no model server (a gateway-only host): every unit is on another host.
        units = SystemdUnits(host=args.host if cfg.hosts is not None else None)
    app = _create_app(cfg, units)

    async def run(stop: asyncio.Event) -> None:
        async with serve(app, cfg.gateway.host, cfg.gateway.port) as runner:
            with announced(runner.addresses[0], cfg.source, "gateway"):
                await stop.wait()

    _run_loop(_until_signalled(run, app))
    return 0


def cmd_up(args) -> int:
    from gateway.app.up import run_up
    from gateway.base.observability import setup_logging

    cfg = _load(args)
    here = _here(cfg, args.host)
    _check_vllm_python(cfg)
    setup_logging(cfg.gateway.log_level)
    app = _create_app(cfg)
    _run_loop(_until_signalled(lambda stop: run_up(cfg, app, stop, here, announce=True), app))
    return 0


def cmd_check(args) -> int:
    cfg = _load(args)
    plan = full_plan(cfg)
    print(f"config {cfg.source}: OK")
    tls = f", HTTPS with {cfg.gateway.tls.cert}" if cfg.gateway.tls else ""
    print(f"gateway  {'https' if tls else 'http'}://{cfg.gateway.host}:{cfg.gateway.port}  "
          f"(max_queue {cfg.gateway.max_queue}, api keys: "
          f"{'file ' + str(cfg.gateway.api_key_file) if cfg.gateway.api_key_file else 'none/env'}{tls})")
    for m in plan["models"]:
        names = ", ".join([m["name"], *m["aliases"]])
        flag = "  (default)" if m["default"] else ""
        spread = "".join(f", {m[k]} {k}" for k in ("replicas", "nodes") if m.get(k, 1) > 1)
        per = f" ({m['replica_concurrency']} per replica)" if m.get("replicas", 1) > 1 else ""
        print(f"model {names}{flag}: {m['kind']} at {m['url']}{spread}, max_concurrency {m['max_concurrency']}{per}"
              + (", embeddings" if m["task"] == "embed" else ""))
        for preset, defaults in m["presets"].items():
            print(f"    preset {preset}: " + ", ".join(f"{k}={v}" for k, v in defaults.items()))
        if m["kind"] == "managed":
            if m["load"] == "on_demand":
                keep = "never" if m["keep_alive"] < 0 else f"{m['keep_alive']:g} s"
                print(f"    load on_demand ({m['swap']}), share {m['share']:g}, keep_alive {keep}")
            env = " ".join(f"{k}={v}" for k, v in m["env"].items())
            print(f"    {env + ' ' if env else ''}{subprocess.list2cmdline(m['argv'])}")
    _print_hosts(plan)
    residency = plan["residency"]
    if residency["on_demand_together"]:
        always = ", ".join(residency["always"])
        print(f"resident together: {always} (always), with any one of:" if always else
              "resident together: any one of:")
        for names in residency["on_demand_together"]:
            print(f"    {', '.join(names)}")
    return 0


def _print_hosts(plan: dict) -> None:
    """Per host and card: the shares taken, then each server placed there."""
    for host in plan["hosts"]:
        servers = [p for p in plan["placements"] if p["host"] == host["name"]]
        gpus = "" if host["gpus"] is None else (f", {host['gpus']} GPU" + ("s" if host["gpus"] != 1 else "")
                                                  if host["gpus"] else ", no GPU")
        offset = f", port_offset {host['port_offset']}" if host["port_offset"] else ""
        print(f"host {host['name']} at {host['address']}{gpus}{offset}: {len(servers)} server"
              + ("s" if len(servers) != 1 else ""))
        for card, shares in host["cards"].items():
            used = sum(v for k, v in shares.items() if not k.endswith("(on_demand)"))
            label = "all cards" if card == "*" else f"GPU {card}"
            gib = host["gpu_memory_gib"]
            print(f"    {label}: " + ", ".join(f"{k} {v:g}" for k, v in shares.items())
                  + f"  ({used:.2f} of 1 always resident" + (f": {used * gib:.1f} of {gib:g} GiB)" if gib else ")"))
        for p in servers:
            where = f"port {p['port']}" if p["port"] else "no HTTP port"
            cards = f"CUDA_VISIBLE_DEVICES={p['devices']}" if p["devices"] is not None else "not pinned"
            role = p["role"] if p["nodes"] == 1 else f"{p['role']} (node {p['node']} of {p['nodes']}, " \
                                                     f"master {p['master']}, VLLM_HOST_IP={p['node_ip']})"
            print(f"    localai-model@{p['unit']}: {p['model']} replica {p['replica']}, {role}, {where}, {cards}")
            if p["memory"]:
                print(f"        {p['memory']['card']}: {p['memory']['summary']}")


def cmd_plan(args) -> int:
    cfg = _load(args)
    plan = full_plan(cfg)
    if args.host:  # one host's servers (what Ansible renders units for there)
        here = {p.unit for p in _here(cfg, args.host)}
        plan["placements"] = [p for p in plan["placements"] if p["unit"] in here]
    print(json.dumps(plan, indent=2))
    return 0


def cmd_run_model(args) -> int:
    """Exec one placement's vLLM server in place of this process (a systemd unit's ExecStart)."""
    cfg = _load(args)
    _, plan = _unit_plan(cfg, args.name)
    _check_vllm_python(cfg)
    sys.stdout.flush()
    os.execve(plan.argv[0], plan.argv, {**os.environ, **plan.env})
    return 1  # not reached


def cmd_wait_ready(args) -> int:
    """Exit 0 once the model's vLLM answers /health (a unit's ExecStartPost)."""
    cfg = _load(args)
    where, plan = _unit_plan(cfg, args.name)
    if where.role == "worker":
        print(f"{args.name} is a worker of {where.model}: its head answers /health")
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(plan.url + "/health", timeout=5) as r:
                if r.status == 200:
                    print(f"model {args.name} is ready at {plan.url}")
                    return 0
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)  # polling interval while the server loads, not synchronisation
    print(f"localai: model {args.name} did not answer {plan.url}/health within {args.timeout:g} s",
          file=sys.stderr)
    return 1


def cmd_tiny_model(args) -> int:
    python = args.python
    if python is None and args.config:
        python = str(_load(args).vllm.python)
    python = python or os.environ.get("LOCALAI_VLLM_PYTHON") or sys.executable
    cmd = [python, str(TINYMODEL_SCRIPT), str(args.dir), "--seed", str(args.seed)]
    return subprocess.call(cmd)


URL_ENV = "LOCALAI_URL"
CONFIG_ENV = "LOCALAI_CONFIG"


def _running(args, url_too: bool = False) -> str | None:
    """Set args.config to the config of the service a command looks at, if --config did not:
    $LOCALAI_CONFIG, else the config the gateway running here was started with, else the
    default path. Returns the URL that gateway listens on, where its record says."""
    from gateway.app.runtime import find_running, record_dirs

    if args.config is not None:
        return None
    if os.environ.get(CONFIG_ENV):
        args.config = Path(os.environ[CONFIG_ENV])
        return None
    running = find_running()
    if running is not None:
        args.config = Path(running["config"])
        return str(running["url"])
    if not DEFAULT_CONFIG_PATH.exists():
        tried = ", ".join(["--config", *([f"${URL_ENV}"] if url_too else []), f"${CONFIG_ENV}"])
        _die(f"no running localai found: no {tried}, no gateway's record in "
             f"{' or '.join(str(d) for d in record_dirs())}, and no {DEFAULT_CONFIG_PATH}.\n"
             "Start one (localai up --config FILE), or say where it is: --config FILE"
             + (f" or {URL_ENV}=http://HOST:PORT" if url_too else ""), 1)
    args.config = DEFAULT_CONFIG_PATH
    return None


def _gateway(args, admin: bool = False):
    """The running gateway `ps`, `load` and `unload` speak to: that of --config, else $LOCALAI_URL,
    else as _running finds it; the key from $LOCALAI_API_KEY, else the config's key file (`admin`:
    its first key named in gateway.admin_keys)."""
    from gateway.app.runtime import client_url
    from gateway.cli.ollama_verbs import Gateway, config_key, env_key

    url = os.environ.get(URL_ENV) if args.config is None else None
    if url:
        return Gateway(url.rstrip("/"), env_key())
    url = _running(args, url_too=True)
    cfg = _load(args)
    return Gateway(url or client_url(cfg.gateway.host, cfg.gateway.port), env_key() or config_key(cfg, admin))


def cmd_status(args) -> int:
    from gateway.cli.ops import status_main

    _running(args)
    return status_main(args)


def cmd_logs(args) -> int:
    from gateway.cli.ops import logs_main

    return logs_main(args)


def cmd_ps(args) -> int:
    from gateway.cli.ollama_verbs import ps_main

    return ps_main(_gateway(args), args.json)


def cmd_load(args) -> int:
    from gateway.cli.ollama_verbs import load_main

    return load_main(_gateway(args), args.name, args.keep_alive)


def cmd_unload(args) -> int:
    from gateway.cli.ollama_verbs import unload_main

    return unload_main(_gateway(args), args.name)


def cmd_drain(args) -> int:
    from gateway.cli.drain import drain_main

    return drain_main(_gateway(args, admin=True), args.model, args.replica, args.wait, args.force)


def cmd_undrain(args) -> int:
    from gateway.cli.drain import undrain_main

    return undrain_main(_gateway(args, admin=True), args.model, args.replica, args.wait)


def cmd_batch(args) -> int:
    from gateway.cli.batch import batch_main

    return batch_main(_gateway(args), args.verb, args.id, args.json)


def cmd_usage(args) -> int:
    from gateway.cli.usage import usage_main

    limits = None
    db = args.db
    if db is None:
        args.config = args.config or Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_PATH))
        cfg = _load(args)
        if cfg.gateway.usage_db is None:
            _die(f"{args.config} records no usage (gateway.usage_db: null)", 1)
        db, limits = cfg.gateway.usage_db, cfg.gateway.key_limits
    elif args.config is not None:
        limits = _load(args).gateway.key_limits
    code, text = usage_main(db, args.since, args.by, args.json, limits)
    if code:
        _die(text, code)
    print(text)
    return 0


def cmd_pull(args) -> int:
    """A configured model's weights (or a hub model's, by id) into the cache its server reads."""
    from gateway.lifecycle.pull import Meter, PullError, hub_cache, hub_token, is_repo_id, pull

    env: dict[str, str] = dict(os.environ)
    name = repo = args.name
    page = urllib.parse.urlsplit(name)
    on_page = page.scheme in ("http", "https") and bool(page.netloc)
    if on_page:  # a model's page on a hub (https://huggingface.co/ORG/NAME): that hub, that model
        name = repo = page.path.strip("/")
    # A hub id needs no config (one may still say where the cache is); a model's name does.
    if args.config.exists() or not is_repo_id(name):
        cfg = _load(args)
        env.update(cfg.vllm.env)
        if any(m.name == name for m in cfg.models):
            model = cfg.model(name)
            if not isinstance(model, ManagedModel):
                print(f"{name}: served by {model.url}; nothing to pull")
                return 0
            env.update(model.env)
            repo = model.model
            if Path(repo).is_dir():
                print(f"{name}: its weights are the folder {repo}; nothing to pull")
                return 0
            if not is_repo_id(repo):
                _die(f"{cfg.source}: model '{name}' is read from the folder {repo}, which is missing; "
                     "only hub models can be pulled")
    if not is_repo_id(repo):
        _die(f"'{repo}' is neither a model of {args.config} nor a hub model id (ORG/NAME)")
    if on_page:
        env["HF_ENDPOINT"] = f"{page.scheme}://{page.netloc}"
    if args.token_file:
        env["HF_TOKEN"], env["HF_TOKEN_PATH"] = "", str(args.token_file)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    meter = Meter(sys.stdout.isatty(), write)
    try:
        snapshot = asyncio.run(pull(repo, hub_cache(env), meter, endpoint=env.get("HF_ENDPOINT"),
                                    token=hub_token(env), revision=args.revision))
    except PullError as exc:
        _die(str(exc), 1)
    except KeyboardInterrupt:
        _die("interrupted: pull again to resume", 130)
    print(f"{repo}: {snapshot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from gateway.cli.drain import add_arguments as add_drain_arguments
    from gateway.cli.ops import add_logs_arguments, add_status_arguments

    parser = argparse.ArgumentParser(prog="localai", description="Self-hosted OpenAI-compatible AI service.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", type=Path,
                       default=Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_PATH)),
                       help=f"config file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG_PATH})")
        return p

    def of_running(p: argparse.ArgumentParser, url: bool = False) -> argparse.ArgumentParser:
        """--config for the commands that look at the running service: they find it without."""
        p.add_argument("--config", "-c", type=Path,
                       help="config file (default: " + (f"the gateway at ${URL_ENV}, " if url else "")
                            + f"${CONFIG_ENV}, the config the gateway running here was started with, "
                              f"or {DEFAULT_CONFIG_PATH})")
        return p

    p = with_config(sub.add_parser("gateway", help="run the gateway alone"))
    p.add_argument("--units", action="store_true",
                   help="run by systemd: start and stop load: on_demand models' units "
                        "(localai-model@NAME.service) over D-Bus")
    p.add_argument("--host", metavar="NAME",
                   help="with --units and a config with hosts: the name of the host the gateway runs on "
                        "(one the config does not list serves no model); the units of models placed on "
                        "other hosts are started and stopped there (systemctl -H NAME, over SSH). Unset: "
                        "every unit is started on this host")
    p.set_defaults(func=cmd_gateway)
    p = with_config(sub.add_parser("up", help="run the gateway and the model servers placed on this machine "
                                              "in the foreground"))
    p.add_argument("--host", action="append", metavar="NAME",
                   help="start the servers placed on this host of the config's hosts: (repeatable; "
                        "default: every server without hosts:, else the host named 'local')")
    p.set_defaults(func=cmd_up)
    with_config(sub.add_parser("check", help="validate the config and print the plan")).set_defaults(func=cmd_check)
    p = with_config(sub.add_parser("plan", help="print the plan as JSON"))
    p.add_argument("--json", action="store_true", help="JSON output (the default and only format)")
    p.add_argument("--host", action="append", metavar="NAME",
                   help="list only the servers placed on this host (repeatable)")
    p.set_defaults(func=cmd_plan)
    p = with_config(sub.add_parser("run-model", help="exec one model's vLLM server (systemd ExecStart)"))
    p.add_argument("name", help="the unit instance: NAME (replica 0), NAME.1 (replica 1), NAME.node1 (a worker)")
    p.set_defaults(func=cmd_run_model)
    p = with_config(sub.add_parser("wait-ready", help="wait until one model's server answers /health"))
    p.add_argument("name", help="the unit instance, as for run-model")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds (default 1800)")
    p.set_defaults(func=cmd_wait_ready)
    p = of_running(sub.add_parser("status", help="units, model readiness, ports and GPUs at a glance"))
    add_status_arguments(p)
    p.set_defaults(func=cmd_status)
    p = with_config(sub.add_parser("logs", help="the JSON journal of one unit or all, readable"))
    add_logs_arguments(p)
    p.set_defaults(func=cmd_logs)
    p = of_running(sub.add_parser("ps", help="the models resident now, since and until when, their VRAM share"),
                   url=True)
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_ps)
    p = of_running(sub.add_parser("load", help="bring a load: on_demand model in now"), url=True)
    p.add_argument("name")
    p.add_argument("--keep-alive", help="how long it stays once idle: 10m, 30s, -1 = until room is needed")
    p.set_defaults(func=cmd_load)
    p = of_running(sub.add_parser("unload", help="take a load: on_demand model off its card (once idle)"), url=True)
    p.add_argument("name")
    p.set_defaults(func=cmd_unload)
    p = of_running(sub.add_parser("drain", help="send a model's replica no new request (before its server "
                                                "restarts); its requests in flight finish"), url=True)
    add_drain_arguments(p, drain=True)
    p.set_defaults(func=cmd_drain)
    p = of_running(sub.add_parser("undrain", help="let a drained replica take requests again"), url=True)
    add_drain_arguments(p, drain=False)
    p.set_defaults(func=cmd_undrain)
    p = of_running(sub.add_parser("batch", help="the key's batch jobs on the running gateway: ls, show ID, cancel ID"),
                   url=True)
    p.add_argument("verb", choices=("ls", "show", "cancel"))
    p.add_argument("id", nargs="?", help="the batch's id (show, cancel)")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_batch)
    p = sub.add_parser("usage", help="requests, tokens and GPU time by key, model or day, from the usage database")
    p.add_argument("--config", "-c", type=Path, help=(
        f"config whose gateway.usage_db to read, and whose budgets to show (default: ${CONFIG_ENV} or "
        f"{DEFAULT_CONFIG_PATH})"))
    p.add_argument("--db", type=Path, help="read this usage database file instead (with --config: its budgets)")
    p.add_argument("--since", default="7d", help="Nd, Nh or YYYY-MM-DD (default: 7d)")
    p.add_argument("--by", choices=("key", "model", "day"), default="key", help="one row per (default: key)")
    p.add_argument("--json", action="store_true", help="everything as JSON: totals, by_key, by_model, by_day")
    p.set_defaults(func=cmd_usage)
    p = with_config(sub.add_parser("pull", help="download a model's weights into the cache its vLLM reads "
                                                "(resumable, with progress)"))
    p.add_argument("name", help="a model of the config (its model: hub id), a hub model id ORG/NAME, or its "
                                "page's URL (https://huggingface.co/ORG/NAME)")
    p.add_argument("--revision", default="main", help="branch, tag or commit (default: main)")
    p.add_argument("--token-file", type=Path, help="read the hub token from this file (default: $HF_TOKEN, "
                                                    "$HF_TOKEN_PATH, $HF_HOME/token)")
    p.set_defaults(func=cmd_pull)
    p = sub.add_parser("tiny-model", help="write a tiny random-weight model for demos and tests (offline)")
    p.add_argument("dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--python", help="interpreter with torch+transformers (default: vllm.python of --config, "
                                    "$LOCALAI_VLLM_PYTHON, or this one)")
    p.add_argument("--config", "-c", type=Path, help="take the interpreter from this config's vllm.python")
    p.set_defaults(func=cmd_tiny_model)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("localai")
    except importlib.metadata.PackageNotFoundError:  # a source tree run without `pip install`
        return "unknown (not installed)"


# What the shell sees of a command killed by SIGPIPE (git, ollama) in `localai plan | head -1`.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left: say nothing. Python flushes stdout once more as it exits; point it at
        # /dev/null so that flush has nowhere to fail (as Python's docs on SIGPIPE advise).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code

