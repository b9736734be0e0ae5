package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Row is one documented value of the chart.
type Row struct {
	Key, Type, Default, Description string
}

// ValueRows walks values.yaml and returns one row per documented value. A
// mapping whose keys carry comments is descended into; anything else is a leaf
// and must have a comment of its own, so every value a user can set is
// described.
func ValueRows(values []byte) ([]Row, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(values, &doc); err != nil {
		return nil, fmt.Errorf("parsing: %w", err)
	}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("want a mapping at the top level")
	}
	var rows []Row
	var undocumented []string
	var walk func(prefix string, m *yaml.Node) error
	walk = func(prefix string, m *yaml.Node) error {
		for i := 0; i+1 < len(m.Content); i += 2 {
			k, v := m.Content[i], m.Content[i+1]
			key := prefix + k.Value
			if v.Kind == yaml.MappingNode && childrenDocumented(v) {
				if err := walk(key+".", v); err != nil {
					return err
				}
				continue
			}
			desc := commentText(k.HeadComment)
			if desc == "" {
				undocumented = append(undocumented, key)
				continue
			}
			var val any
			if err := v.Decode(&val); err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
			def, err := json.Marshal(val)
			if err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
			rows = append(rows, Row{Key: key, Type: typeOf(val), Default: string(def), Description: desc})
		}
		return nil
	}
	if err := walk("", doc.Content[0]); err != nil {
		return nil, err
	}
	if len(undocumented) > 0 {
		return nil, fmt.Errorf("values without a comment: %s; describe each in a comment on the line(s) above it", strings.Join(undocumented, ", "))
	}
	return rows, nil
}

// ValuesTable renders the rows as a Markdown table.
func ValuesTable(values []byte) ([]byte, error) {
	rows, err := ValueRows(values)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString("| Key | Type | Default | Description |\n|-----|------|---------|-------------|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| `%s` | %s | `%s` | %s |\n", r.Key, r.Type, r.Default, escapeCell(r.Description))
	}
	return []byte(b.String()), nil
}

func childrenDocumented(m *yaml.Node) bool {
	for i := 0; i < len(m.Content); i += 2 {
		if commentText(m.Content[i].HeadComment) != "" {
			return true
		}
	}
	return false
}

// commentText joins a comment block into one line of prose.
func commentText(c string) string {
	var parts []string
	for _, line := range strings.Split(c, "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "#"))
		if line != "" {
			parts = append(parts, line)
		}
	}
	return strings.Join(parts, " ")
}

func typeOf(v any) string {
	switch v.(type) {
	case string:
		return "string"
	case int, int64, uint64:
		return "int"
	case float64:
		return "number"
	case bool:
		return "bool"
	case []any:
		return "list"
	case map[string]any:
		return "object"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

func escapeCell(s string) string {
	return strings.ReplaceAll(s, "|", `\|`)
}
