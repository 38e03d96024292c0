"""faust agents and the pure payment rules they call."""
