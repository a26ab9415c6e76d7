"""Side effects, one small executor each: the core modules never touch the OS."""
