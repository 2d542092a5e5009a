"""Building blocks of the enforcement points (the HTTP and MCP gateways): the durable
local audit spool and the credential broker. The gateways run as their own processes
and talk to the control plane over HTTP."""
