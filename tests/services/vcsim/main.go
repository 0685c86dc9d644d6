// vcsim for the hvmigrate tests: govmomi's vSphere API simulator with the inventory the ESX tests need.
//
// Built by tests/services/vcsim.py from Debian's golang-github-vmware-govmomi-dev (GO111MODULE=off,
// GOPATH=/usr/share/gocode). It serves the real vSphere SOAP API over TLS on 127.0.0.1 with a certificate
// it mints at start (written to -cert-out, so the tests know its thumbprint), accepts one user and
// password (from the environment, never the command line), and prints one JSON line on stdout once it
// serves. It runs until it is killed.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

type datastores []string

func (d *datastores) String() string     { return strings.Join(*d, ",") }
func (d *datastores) Set(v string) error { *d = append(*d, v); return nil }

// certificate mints a self-signed ECDSA certificate for 127.0.0.1, as an ESXi host makes its own at install.
func certificate(out string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	template := x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "127.0.0.1", Organization: []string{"hvmigrate vcsim"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	pemCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(out, pemCert, 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func main() {
	kind := flag.String("model", "vpx", "vpx (vCenter: cluster of 2 hosts, 2 datastores, a DVS) or esx")
	certOut := flag.String("cert-out", "", "where to write the server certificate (PEM)")
	var extra datastores
	flag.Var(&extra, "ds", "NAME=DIR: one more local datastore, mounted on every host (repeatable)")
	flag.Parse()

	user, password := os.Getenv("VCSIM_USER"), os.Getenv("VCSIM_PASSWORD")
	if user == "" || password == "" || *certOut == "" {
		log.Fatal("VCSIM_USER, VCSIM_PASSWORD and -cert-out are required")
	}
	cert, err := certificate(*certOut)
	if err != nil {
		log.Fatalf("certificate: %s", err)
	}

	var model *simulator.Model
	switch *kind {
	case "vpx":
		model = simulator.VPX()
		model.Host = 0 // no standalone host: the cluster holds both
		model.ClusterHost = 2
		model.Datastore = 2
		model.Portgroup = 1
		model.Pool = 1
		model.Machine = 1
	case "esx":
		model = simulator.ESX()
		model.Machine = 1
	default:
		log.Fatalf("unknown model %q", *kind)
	}
	defer model.Remove()
	if err := model.Create(); err != nil {
		log.Fatalf("create: %s", err)
	}
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword(user, password)}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	server := model.Service.NewServer()
	defer server.Close()

	ctx := context.Background()
	login := *server.URL
	login.User = url.UserPassword(user, password)
	client, err := govmomi.NewClient(ctx, &login, true)
	if err != nil {
		log.Fatalf("login: %s", err)
	}
	finder := find.NewFinder(client.Client, false)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		log.Fatalf("datacenter: %s", err)
	}
	finder.SetDatacenter(dc)
	hosts, err := finder.HostSystemList(ctx, "*")
	if err != nil {
		hosts, err = finder.HostSystemList(ctx, "*/*")
	}
	if err != nil {
		log.Fatalf("hosts: %s", err)
	}
	for _, spec := range extra {
		name, dir, ok := strings.Cut(spec, "=")
		if !ok {
			log.Fatalf("-ds %q: expected NAME=DIR", spec)
		}
		for _, host := range hosts {
			dss, err := host.ConfigManager().DatastoreSystem(ctx)
			if err != nil {
				log.Fatalf("datastore system: %s", err)
			}
			if _, err := dss.CreateLocalDatastore(ctx, name, dir); err != nil {
				log.Fatalf("datastore %s: %s", name, err)
			}
		}
	}
	if *kind == "vpx" {
		// A distributed port group that tags VLAN 100, beside the model's untagged DC0_DVPG0.
		nets, err := finder.NetworkList(ctx, "DVS0")
		if err != nil || len(nets) == 0 {
			log.Fatalf("DVS0: %v", err)
		}
		dvs := nets[0].(*object.DistributedVirtualSwitch)
		vlan := &types.VMwareDVSPortSetting{Vlan: &types.VmwareDistributedVirtualSwitchVlanIdSpec{VlanId: 100}}
		task, err := dvs.AddPortgroup(ctx, []types.DVPortgroupConfigSpec{
			{Name: "DC0_DVPG_VLAN100", Type: "earlyBinding", NumPorts: 16, DefaultPortConfig: vlan},
		})
		if err == nil {
			err = task.Wait(ctx)
		}
		if err != nil {
			log.Fatalf("port group: %s", err)
		}
		// A folder for migrated VMs, as an administrator would make one.
		folders, err := dc.Folders(ctx)
		if err != nil {
			log.Fatalf("folders: %s", err)
		}
		if _, err := folders.VmFolder.CreateFolder(ctx, "migrated"); err != nil {
			log.Fatalf("folder: %s", err)
		}
	}
	_ = client.Logout(ctx)

	served := *server.URL
	served.User = nil // the password stays out of the output
	ready, _ := json.Marshal(map[string]string{"url": served.String(), "model": *kind})
	fmt.Println(string(ready))
	os.Stdout.Sync()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
