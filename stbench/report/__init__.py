"""Reporting: results files, predictions files, the leaderboard, figures and exports."""
