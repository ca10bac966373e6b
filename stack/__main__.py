"""`python -m stack run`: the service, Prometheus and Alertmanager on 127.0.0.1 until Ctrl-C.

With no Slack webhook configured, a local Slack stand-in receives Alertmanager's messages and prints them.
"""

import argparse
import signal
import sys
import time
from pathlib import Path

from stack.processes import Ports, Stack, StartError
from stack.slack_receiver import SlackReceiver, format_message

DEFAULT_WEBHOOK_FILE = Path("secrets/slack_webhook_url")


def run(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    receiver = None
    webhook_file: Path = args.slack_webhook_url_file
    if not webhook_file.is_file():
        receiver = SlackReceiver(on_message=lambda message: print(format_message(message), flush=True))
        receiver.start("127.0.0.1", args.slack_port)
        webhook_file = run_dir / "slack_webhook_url"
        webhook_file.write_text(receiver.url + "\n")
    stack = Stack(
        run_dir=run_dir,
        model_dir=args.model_dir.resolve(),
        slack_webhook_url_file=webhook_file.resolve(),
        ports=Ports(args.service_port, args.prometheus_port, args.alertmanager_port),
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        stack.start()
        print(f"service       {stack.url('service')}  (docs: {stack.url('service')}/docs)")
        print(f"prometheus    {stack.url('prometheus')}  (alerts: {stack.url('prometheus')}/alerts)")
        print(f"alertmanager  {stack.url('alertmanager')}")
        if receiver is not None:
            print(f"slack         no {args.slack_webhook_url_file}: messages print here (local stand-in)")
        else:
            print(f"slack         webhook URL read from {webhook_file}")
        print(f"logs and data {run_dir}")
        print("drill: python -m service traffic --scenario outliers --duration 180  (Ctrl-C here stops all)")
        while True:
            for name, process in stack.processes.items():
                if process.poll() is not None:
                    print(f"error: {name} exited with {process.returncode}; see {run_dir / name}.log")
                    return 1
            time.sleep(1.0)  # supervision loop, not a wait for a condition
    except StartError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping…", flush=True)
        stack.stop()
        if receiver is not None:
            receiver.stop()


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
    start.add_argument("--slack-port", type=int, default=9099, help="port of the local Slack stand-in")
    start.set_defaults(handler=run)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
