"""Launch files, parameter files and RViz configuration of the APT stack."""
