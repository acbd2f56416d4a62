"""Results tables, figures and the HTML report."""
