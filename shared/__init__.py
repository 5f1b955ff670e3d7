"""Code two or more services truly share: settings, topic names, the app factory, event-time logic."""
