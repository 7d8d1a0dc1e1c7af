"""The built-in capabilities, each a package of its own, registered through the
idp.capabilities entry-point group."""
