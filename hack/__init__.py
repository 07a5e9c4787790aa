"""Generators of committed files: docs tables, the chart's copies of deploy/, dashboards."""
