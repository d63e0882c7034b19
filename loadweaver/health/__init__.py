"""Backend health.

Active checks: `verdict` (Verdict and the rise/fall HealthState), `probe` (one HTTP or TCP probe)
and `checker` (ActiveChecker, a probe loop per Target). Nothing is imported here, so importing
one health module (say, from the data plane) does not pull in the others and their imports.
"""
