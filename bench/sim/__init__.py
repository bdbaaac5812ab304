"""The emulated phone: the device side of ADB on loopback, an Android-looking sandbox, and a
physical model of heat and battery. Side module: imports levels 0-1 only, never the run path."""
