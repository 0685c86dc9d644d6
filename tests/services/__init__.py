"""Real services the tests start on loopback (BIND, ...); each fixture skips when its program is absent."""
