package main

import (
	"math"
	"slices"
	"time"
)

// percentile of d (q in 0..1), nearest-rank; NaN for no samples.
func percentile(d []time.Duration, q float64) float64 {
	if len(d) == 0 {
		return math.NaN()
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	i = max(0, min(i, len(s)-1))
	return ms(s[i])
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// ratio a/b, NaN when b is zero or either side is missing.
func ratio(a, b float64) float64 {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return math.NaN()
	}
	return a / b
}

// rotate gives the peer order for round r, so every peer runs first, last
// and in between as often as the others and drift hits all alike.
func rotate[T any](s []T, r int) []T {
	out := make([]T, 0, len(s))
	for i := range s {
		out = append(out, s[(i+r)%len(s)])
	}
	return out
}
