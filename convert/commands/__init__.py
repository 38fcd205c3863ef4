"""One module per ``edge`` subcommand: ``add_arguments(parser)`` and ``main(args) -> int``."""
