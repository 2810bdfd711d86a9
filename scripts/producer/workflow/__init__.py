"""Where a production stands and what comes next: the planner, status, next, approvals, retakes, seeds,
recipes, rehearsals, drift and the forecast. Imports makers and below.
"""
