"""Examples: a processor in the seed's style and a .tac composing a Client."""
