"""One module per ``bvit-interp`` subcommand: ``add_parser(parser)`` and ``run(args) -> int``."""
