"""Models: backbones, heads, orthogonal projection, EMA teacher."""
