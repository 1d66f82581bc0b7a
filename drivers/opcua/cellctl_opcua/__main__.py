"""`python -m cellctl_opcua browse|cert ...`: the commissioning commands without the
`cellctl` front end (the same commands cellctl mounts as `cellctl browse` and `cellctl cert`)."""

import click

from cellctl_opcua.cli import browse, cert


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """OPC UA commissioning: browse a server, manage the client certificate and trust store."""


main.add_command(browse)
main.add_command(cert)

if __name__ == "__main__":
    main(prog_name="python -m cellctl_opcua")
