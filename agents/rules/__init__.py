"""The payment rules: pure functions and plain data, no faust, Kafka, psycopg or sklearn.

``decide(state, request, context) -> (new_state, outcomes)`` for requests and
``apply_leg(state, leg, context) -> (new_state, outcomes)`` for the internal legs
are the only entry points the agents call.
"""

from agents.rules.decide import Context, FraudAssessment, Outcomes, apply_leg, decide
from agents.rules.state import AccountState

__all__ = ["AccountState", "Context", "FraudAssessment", "Outcomes", "apply_leg", "decide"]
