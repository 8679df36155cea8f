from rest_framework_simplejwt.serializers import TokenObtainPairSerializer


class TokenObtainPairWithNameSerializer(TokenObtainPairSerializer):
    """SimpleJWT's pair serializer, with the user's name in the tokens: switchboard shows
    `username` (or `name`) in rooms; without it a user is shown by their id, or by the
    name set with PUT /api/users/{id} (see signals.py)."""

    @classmethod
    def get_token(cls, user):
        token = super().get_token(user)
        token["username"] = user.get_username()
        return token
