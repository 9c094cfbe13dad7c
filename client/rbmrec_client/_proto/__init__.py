"""Message classes generated from proto/rbmrec/v1/recommender.proto (never edited by hand)."""
