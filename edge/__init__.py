"""The gateway daemon: config, pollers, uplink, commands, control socket, technician CLI."""
