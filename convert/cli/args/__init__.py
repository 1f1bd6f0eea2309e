"""The `convert` command's arguments (argparse only), a module per part: base (the parser class and what every command
shares), model (the model and its conversion), job, bench, distill, quantize, service."""

from convert.cli.args.base import LOG_LEVELS, Parser, version
from convert.cli.args.bench import bench_parser
from convert.cli.args.job import convert_parser
from convert.cli.args.model import inspect_parser

__all__ = ["LOG_LEVELS", "Parser", "bench_parser", "convert_parser", "inspect_parser", "version"]
