"""``python -m claudeproxy``: run the proxy from the command line."""

if __name__ == "__main__":
    try:
        from .commands import process_main
    except KeyboardInterrupt:  # Ctrl-C while the modules load: stopped, without a traceback
        raise SystemExit(130) from None
    raise SystemExit(process_main())
