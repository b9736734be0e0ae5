// Package observability checks the Grafana dashboard and the PrometheusRule
// shipped in charts/falguard against the code: every PromQL expression must be
// well formed (balanced brackets, closed strings, known functions, valid
// durations and matchers) and name only metrics the manager or the sidecar
// really exports. The full Prometheus parser is not used on purpose: it would
// pull github.com/prometheus/prometheus and its dependency tree into go.mod.
package observability

import (
	"fmt"
	"regexp"
	"strings"
)

// functions are PromQL functions the expressions may call (and Grafana's
// label_values in template variable queries).
var functions = map[string]bool{
	"abs": true, "absent": true, "absent_over_time": true, "avg_over_time": true, "ceil": true, "changes": true,
	"clamp": true, "clamp_max": true, "clamp_min": true, "count_over_time": true, "delta": true, "deriv": true,
	"floor": true, "histogram_quantile": true, "idelta": true, "increase": true, "irate": true, "label_join": true,
	"label_replace": true, "last_over_time": true, "max_over_time": true, "min_over_time": true, "predict_linear": true,
	"rate": true, "resets": true, "round": true, "scalar": true, "sort": true, "sort_desc": true, "sum_over_time": true,
	"time": true, "timestamp": true, "vector": true, "label_values": true,
}

// aggregations may take a by/without clause before or after their argument.
var aggregations = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "count": true, "stddev": true, "stdvar": true,
	"topk": true, "bottomk": true, "quantile": true, "group": true, "count_values": true,
}

// keywords are PromQL words that are neither metrics nor functions.
var keywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true,
}

// matchOps compare a label with a string in a selector.
var matchOps = map[string]bool{"=": true, "!=": true, "=~": true, "!~": true}

// labelListKeywords are followed by a parenthesised list of label names.
var labelListKeywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

type tokKind int

const (
	tIdent tokKind = iota
	tString
	tNumber
	tDuration
	tOp
	tOpen  // ( [ {
	tClose // ) ] }
)

type token struct {
	kind tokKind
	text string
	pos  int
}

var (
	identRe    = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*`)
	numberRe   = regexp.MustCompile(`^(0x[0-9a-fA-F]+|[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?)`)
	durationRe = regexp.MustCompile(`^([0-9]+(ms|s|m|h|d|w|y))+$`)
	grafanaVar = regexp.MustCompile(`^\$(__[a-z_]+|[a-zA-Z_][a-zA-Z0-9_]*)`)
	ops        = []string{"==", "!=", ">=", "<=", "=~", "!~", "+", "-", "*", "/", "%", "^", "=", ">", "<", ",", ":", "@"}
)

func lex(expr string) ([]token, error) {
	var toks []token
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '#': // comment to end of line
			for i < len(expr) && expr[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			j := i + 1
			for ; j < len(expr) && expr[j] != c; j++ {
				if expr[j] == '\\' && c != '`' {
					j++
				}
			}
			if j >= len(expr) {
				return nil, fmt.Errorf("string opened at byte %d is never closed", i)
			}
			toks = append(toks, token{tString, expr[i+1 : j], i})
			i = j + 1
		case c == '(' || c == '[' || c == '{':
			toks = append(toks, token{tOpen, string(c), i})
			i++
		case c == ')' || c == ']' || c == '}':
			toks = append(toks, token{tClose, string(c), i})
			i++
		case c == '$':
			m := grafanaVar.FindString(expr[i:])
			if m == "" {
				return nil, fmt.Errorf("stray $ at byte %d", i)
			}
			toks = append(toks, token{tDuration, m, i}) // Grafana interval variables stand for durations
			i += len(m)
		case c >= '0' && c <= '9' || c == '.':
			// A duration (5m, 1h30m) or a number.
			j := i
			for j < len(expr) && (expr[j] >= '0' && expr[j] <= '9' || expr[j] >= 'a' && expr[j] <= 'z' || expr[j] == '.' || expr[j] == 'x' || expr[j] >= 'A' && expr[j] <= 'F') {
				j++
			}
			word := expr[i:j]
			if durationRe.MatchString(word) {
				toks = append(toks, token{tDuration, word, i})
				i = j
				continue
			}
			m := numberRe.FindString(expr[i:])
			if m == "" || len(m) != len(word) {
				return nil, fmt.Errorf("bad number %q at byte %d", word, i)
			}
			toks = append(toks, token{tNumber, m, i})
			i += len(m)
		default:
			if m := identRe.FindString(expr[i:]); m != "" {
				toks = append(toks, token{tIdent, m, i})
				i += len(m)
				continue
			}
			matched := false
			for _, op := range ops {
				if strings.HasPrefix(expr[i:], op) {
					toks = append(toks, token{tOp, op, i})
					i += len(op)
					matched = true
					break
				}
			}
			if !matched {
				return nil, fmt.Errorf("unexpected character %q at byte %d", c, i)
			}
		}
	}
	return toks, nil
}

// Metrics returns the metric names expr selects, or an error describing the
// first syntax problem found.
func Metrics(expr string) ([]string, error) {
	if strings.TrimSpace(expr) == "" {
		return nil, fmt.Errorf("empty expression")
	}
	toks, err := lex(expr)
	if err != nil {
		return nil, err
	}
	pairs := map[string]string{")": "(", "]": "[", "}": "{"}
	type frame struct {
		open   string
		labels bool   // a by(...)/on(...) label list
		fn     string // the function whose arguments these are
	}
	var stack []frame
	var names []string
	for i, t := range toks {
		inside := ""
		if len(stack) > 0 {
			inside = stack[len(stack)-1].open
		}
		next := func() *token {
			if i+1 < len(toks) {
				return &toks[i+1]
			}
			return nil
		}
		prev := func() *token {
			if i > 0 {
				return &toks[i-1]
			}
			return nil
		}
		switch t.kind {
		case tOpen:
			f := frame{open: t.text}
			if p := prev(); t.text == "(" && p != nil && p.kind == tIdent {
				f.labels = labelListKeywords[p.text]
				f.fn = p.text
			}
			if t.text == "[" {
				p := prev()
				selector := p != nil && (p.kind == tClose && (p.text == "}" || p.text == ")") || p.kind == tIdent)
				if !selector {
					return nil, fmt.Errorf("range or subquery [ at byte %d does not follow a selector", t.pos)
				}
			}
			stack = append(stack, f)
		case tClose:
			if len(stack) == 0 || stack[len(stack)-1].open != pairs[t.text] {
				return nil, fmt.Errorf("unbalanced %q at byte %d", t.text, t.pos)
			}
			stack = stack[:len(stack)-1]
		case tDuration:
			afterOffset := prev() != nil && prev().kind == tIdent && prev().text == "offset"
			if inside != "[" && !afterOffset {
				return nil, fmt.Errorf("duration %s at byte %d outside [ ] or offset", t.text, t.pos)
			}
		case tIdent:
			switch {
			case inside == "{":
				// label matcher: name op "value"
				p := prev()
				separated := p != nil && (p.kind == tOpen && p.text == "{" || p.kind == tOp && p.text == ",")
				if !separated {
					return nil, fmt.Errorf("label %s at byte %d: matchers must be separated by commas", t.text, t.pos)
				}
				n := next()
				if n == nil || n.kind != tOp || !matchOps[n.text] {
					return nil, fmt.Errorf("label %s at byte %d is not followed by =, !=, =~ or !~", t.text, t.pos)
				}
				if i+2 >= len(toks) || toks[i+2].kind != tString {
					return nil, fmt.Errorf("label %s at byte %d is not compared with a quoted string", t.text, t.pos)
				}
				if strings.HasSuffix(n.text, "~") {
					if _, err := regexp.Compile("^(?:" + toks[i+2].text + ")$"); err != nil {
						return nil, fmt.Errorf("label %s at byte %d: bad regex: %w", t.text, t.pos, err)
					}
				}
			case len(stack) > 0 && stack[len(stack)-1].labels:
				// a label name in by(...), on(...)
			case keywords[strings.ToLower(t.text)]:
			case aggregations[t.text]:
				n := next()
				hasArg := n != nil && (n.kind == tOpen && n.text == "(" || n.kind == tIdent && (n.text == "by" || n.text == "without"))
				if !hasArg {
					return nil, fmt.Errorf("aggregation %s at byte %d has no argument", t.text, t.pos)
				}
			default:
				if n := next(); n != nil && n.kind == tOpen && n.text == "(" {
					if !functions[t.text] {
						return nil, fmt.Errorf("unknown function %s at byte %d", t.text, t.pos)
					}
					continue
				}
				if p := prev(); len(stack) > 0 && stack[len(stack)-1].fn == "label_values" && p != nil && p.kind == tOp && p.text == "," {
					continue // label_values(metric, label): the label
				}
				names = append(names, t.text)
			}
		}
	}
	if len(stack) > 0 {
		return nil, fmt.Errorf("%q opened at byte %d is never closed", stack[len(stack)-1].open, toks[len(toks)-1].pos)
	}
	if len(names) == 0 && !strings.Contains(expr, "vector(") && !strings.Contains(expr, "time()") {
		return nil, fmt.Errorf("selects no metric")
	}
	return names, nil
}

// BaseName maps a histogram or summary series name to its metric family.
func BaseName(series string, exported func(string) bool) string {
	if exported(series) {
		return series
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if b, ok := strings.CutSuffix(series, suf); ok && exported(b) {
			return b
		}
	}
	return series
}
