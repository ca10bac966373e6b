"""`python -m stack run`: the service, the blackbox and node exporters, Prometheus and Alertmanager on
127.0.0.1 until Ctrl-C or SIGTERM.

With no Slack webhook configured, a local Slack stand-in receives Alertmanager's messages and prints them.
The runbook that the alerts link to is served on --docs-port.
"""

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from stack.processes import Ports, Stack, StartError, prometheus_page
from stack.slack_receiver import SlackReceiver, format_message

DEFAULT_WEBHOOK_FILE = Path("secrets/slack_webhook_url")
DEFAULT_SERVICE_URL = "http://127.0.0.1:8000"  # `python -m service traffic`'s default --url
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(Exception):
    """Raised by the SIGINT/SIGTERM/SIGHUP handler, to leave the supervision loop and stop everything."""


def stop_on_signals() -> None:
    """Set handlers explicitly: a process started in the background may have inherited SIGINT ignored."""

    def handler(signum: int, _frame: object) -> None:
        raise Stopped(signal.Signals(signum).name)

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)


def shell_path(path: Path) -> str:
    """`path` as typed in this working directory: relative when that is shorter."""
    relative = os.path.relpath(path)
    return relative if len(relative) < len(str(path)) else str(path)


def drill_command(service_url: str, model_dir: Path) -> str:
    """The drill to paste in another terminal: `make drill` where it fits, else the command itself."""
    command = f"{shell_path(Path(sys.executable))} -m service traffic --scenario outliers --duration 180"
    if service_url == DEFAULT_SERVICE_URL and model_dir == Path("models").resolve():
        return f"make drill  (= {command})"
    return f"{command} --url {service_url} --model-dir {shell_path(model_dir)}"


def print_where_everything_is(stack: Stack, run_dir: Path, slack: str) -> None:
    service, prometheus = stack.url("service"), stack.url("prometheus")
    lines = [
        ("service", f"{service}/docs  (the API and its docs)"),
        (
            "prometheus",
            f"{prometheus_page(prometheus, 'alerts')}  (graph: {prometheus_page(prometheus, 'graph')})",
        ),
        ("alertmanager", stack.url("alertmanager")),
        ("blackbox", f"{stack.url('blackbox')}  (probes the API from outside)"),
        ("node exporter", f"{stack.url('node')}/metrics  (the machine)"),
        ("runbook", stack.runbook_page),
        ("slack", slack),
        ("prediction log", f"{shell_path(run_dir / 'predictions.jsonl')}  (one JSON line per request)"),
        (
            "process logs",
            f"{shell_path(run_dir)}/{{service,prometheus,alertmanager,blackbox-exporter,node-exporter}}.log",
        ),
        ("drill", f"in another terminal: {drill_command(service, stack.model_dir)}"),
        ("stop", "Ctrl-C here stops everything"),
    ]
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        print(f"{name:<{width}}  {value}", flush=True)


def run(args: argparse.Namespace) -> int:
    stop_on_signals()
    run_dir: Path = args.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    receiver = None
    webhook_file: Path = args.slack_webhook_url_file
    stack = None
    try:
        if webhook_file.is_file():
            slack = f"webhook URL read from {webhook_file}"
        else:
            receiver = SlackReceiver(on_message=lambda message: print(format_message(message), flush=True))
            receiver.start("127.0.0.1", args.slack_port)
            webhook_file = run_dir / "slack_webhook_url"
            webhook_file.write_text(receiver.url + "\n")
            slack = f"no {args.slack_webhook_url_file}: messages print here (local stand-in)"
        stack = Stack(
            run_dir=run_dir,
            model_dir=args.model_dir.resolve(),
            slack_webhook_url_file=webhook_file.resolve(),
            ports=Ports(
                service=args.service_port,
                prometheus=args.prometheus_port,
                alertmanager=args.alertmanager_port,
                docs=args.docs_port,
                blackbox=args.blackbox_port,
                node=args.node_port,
            ),
        )
        stack.start()
        print_where_everything_is(stack, run_dir, slack)
        while True:
            for name, process in stack.processes.items():
                if process.poll() is not None:
                    print(f"error: {name} exited with {process.returncode}; see {run_dir / name}.log")
                    return 1
            time.sleep(1.0)  # supervision loop, not a wait for a condition
    except (StartError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Stopped:
        return 0
    finally:
        for signum in STOP_SIGNALS:  # a second Ctrl-C must not cut the stopping short
            signal.signal(signum, signal.SIG_IGN)
        print("stopping…", flush=True)
        if stack is not None:
            stack.stop()
        if receiver is not None:
            receiver.stop()
        print("stopped", flush=True)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m stack", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    start = commands.add_parser("run", help="run the whole stack until Ctrl-C", description=__doc__)
    start.add_argument("--run-dir", type=Path, default=Path(".run"), help="logs and data (default: .run)")
    start.add_argument(
        "--model-dir", type=Path, default=Path("models"), help="trained models (default: models)"
    )
    start.add_argument(
        "--slack-webhook-url-file",
        type=Path,
        default=DEFAULT_WEBHOOK_FILE,
        help=f"file holding the Slack incoming-webhook URL (default: {DEFAULT_WEBHOOK_FILE})",
    )
    start.add_argument("--service-port", type=int, default=8000)
    start.add_argument("--prometheus-port", type=int, default=9090)
    start.add_argument("--alertmanager-port", type=int, default=9093)
    start.add_argument("--blackbox-port", type=int, default=9115, help="port of the blackbox exporter")
    start.add_argument("--node-port", type=int, default=9100, help="port of the node exporter")
    start.add_argument("--slack-port", type=int, default=9099, help="port of the local Slack stand-in")
    start.add_argument("--docs-port", type=int, default=9098, help="port of the runbook (docs) server")
    start.set_defaults(handler=run)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
