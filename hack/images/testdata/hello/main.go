// Command hello stands in for a real binary in the image builder's tests.
package main

import (
	"crypto/x509"
	"fmt"
)

var version = "dev"

func main() {
	_, err := x509.SystemCertPool()
	fmt.Println("hello", version, err)
}
