"""Stand-ins for the outside world we cannot reach from here (platform APIs, model
providers): small local HTTP servers that speak the real wire format. Shared by the
tests and bench/."""
