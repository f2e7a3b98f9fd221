// vmshift-vcsim: VMware's vCenter simulator (govmomi's simulator library, vcsim's engine) set
// up for vmshift's tests. It listens on 127.0.0.1 over TLS with the tests' certificate, accepts
// one user and password, adds local datastores backed by directories of fixtures (real .vmx and
// VMDK files), and registers the fixture VMs with the hardware the test describes (vcsim does
// not read a .vmx it registers: it gives every VM default hardware, so the test says what the
// .vmx says and this program reconfigures the VM to match).
//
// Usage: vmshift-vcsim CONFIG.json
//
// It prints one JSON line on stdout once it serves ({"url", "datacenter", "vms": {name: moref}}),
// serves until its stdin closes or it gets SIGTERM/SIGINT, and dies with its parent.
//
// Unlike vcsim 0.24, the datastore's /folder endpoint asks for a valid session cookie, as a real
// vCenter does: a request without one gets 401. GET /vmshift-test/stats tells how many /folder
// requests there were, how many were refused, and how many of the sessions they used are still
// logged in (a client that logs out leaves none).
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

type diskSpec struct {
	// Controller: pvscsi, lsilogic, lsilogic-sas, buslogic, sata, ide, nvme.
	Controller string `json:"controller"`
	Bus        int32  `json:"bus"`
	Unit       int32  `json:"unit"`
	// File is the descriptor's path in the datastore, e.g. web01/web01.vmdk.
	File     string `json:"file"`
	Capacity int64  `json:"capacity"`
}

type nicSpec struct {
	Model   string `json:"model"`
	Mac     string `json:"mac"`
	Network string `json:"network"`
}

type vmSpec struct {
	Name           string     `json:"name"`
	Datastore      string     `json:"datastore"`
	Vmx            string     `json:"vmx"`
	Cpus           int32      `json:"cpus"`
	CoresPerSocket int32      `json:"coresPerSocket"`
	MemoryMB       int64      `json:"memoryMB"`
	Firmware       string     `json:"firmware"`
	SecureBoot     bool       `json:"secureBoot"`
	GuestID        string     `json:"guestId"`
	Disks          []diskSpec `json:"disks"`
	Nics           []nicSpec  `json:"nics"`
	PowerOn        bool       `json:"powerOn"`
	Snapshot       string     `json:"snapshot"`
}

type datastoreSpec struct {
	Name string `json:"name"`
	Dir  string `json:"dir"`
}

type config struct {
	User         string          `json:"user"`
	PasswordFile string          `json:"passwordFile"`
	Cert         string          `json:"cert"`
	Key          string          `json:"key"`
	Datastores   []datastoreSpec `json:"datastores"`
	Vms          []vmSpec        `json:"vms"`
	// Generate adds this many more VMs (vcsim's own, with empty disks), for inventory size.
	Generate int `json:"generate"`
	// Model is "vpx" (vCenter: datacenter DC0, a cluster, distributed port groups; the default)
	// or "esx" (a standalone ESXi host: one host, datacenter ha-datacenter, as esx:// sees it).
	Model string `json:"model"`
}

func main() {
	// Die with the parent (the test), whatever happens to it.
	_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0)
	log.SetFlags(0)
	log.SetPrefix("vmshift-vcsim: ")
	if len(os.Args) != 2 {
		log.Fatal("usage: vmshift-vcsim CONFIG.json")
	}
	var cfg config
	raw, err := ioutil.ReadFile(os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		log.Fatalf("%s: %v", os.Args[1], err)
	}
	password, err := ioutil.ReadFile(cfg.PasswordFile)
	if err != nil {
		log.Fatal(err)
	}
	pass := strings.TrimRight(string(password), "\r\n")
	cert, err := tls.LoadX509KeyPair(cfg.Cert, cfg.Key)
	if err != nil {
		log.Fatal(err)
	}

	var model *simulator.Model
	switch cfg.Model {
	case "", "vpx":
		model = simulator.VPX()
		model.Datastore = 1
		model.Host = 0
		model.ClusterHost = 1
	case "esx":
		// ESXi's own inventory: ha-datacenter, one host, no vCenter objects.
		model = simulator.ESX()
		model.Datastore = 1
	default:
		log.Fatalf("unknown model %q: vpx or esx", cfg.Model)
	}
	model.Machine = 0
	if cfg.Generate > 0 {
		// One resource pool (the cluster's): Machine VMs in it.
		model.Machine = cfg.Generate
	}
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	defer model.Remove()
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	model.Service.Listen = &url.URL{
		Host: "127.0.0.1:0",
		User: url.UserPassword(cfg.User, pass),
	}
	// The /folder endpoint is replaced before NewServer registers vcsim's own, so it is wrapped
	// with a session check.
	st := &stats{seen: map[string]bool{}, user: cfg.User, esx: cfg.Model == "esx", live: map[string]bool{}}
	model.Service.ServeMux = http.NewServeMux()
	server := model.Service.NewServer()
	defer server.Close()
	handler := server.Config.Handler
	server.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/folder/"):
			if !st.allow(r) {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
		case r.URL.Path == "/sdk" && r.Method == http.MethodPost:
			body, err := ioutil.ReadAll(io.LimitReader(r.Body, 1<<20))
			if err != nil {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			if !loginAllowed(body, cfg.User, pass) {
				w.Header().Set("Content-Type", "text/xml; charset=utf-8")
				w.WriteHeader(http.StatusInternalServerError)
				_, _ = io.WriteString(w, invalidLoginFault)
				return
			}
			r.Body = ioutil.NopCloser(bytes.NewReader(body))
			handler.ServeHTTP(w, r)
			st.track(body, r, w.Header())
			return
		case r.URL.Path == "/vmshift-test/stats":
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(st.report(cfg.User))
			return
		}
		handler.ServeHTTP(w, r)
	})

	ctx := context.Background()
	u := *server.URL
	c, err := govmomi.NewClient(ctx, &u, true)
	if err != nil {
		log.Fatal(err)
	}
	morefs, dcName, err := setUp(ctx, c, &cfg)
	if err != nil {
		log.Fatal(err)
	}
	_ = c.Logout(ctx)

	out := server.URL
	out.User = nil
	ready, _ := json.Marshal(map[string]interface{}{
		"url":        out.String(),
		"datacenter": dcName,
		"vms":        morefs,
	})
	fmt.Println(string(ready))

	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(ioutil.Discard, os.Stdin)
		close(done)
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-done:
	case <-sig:
	}
}

// dsDirs maps datastore names to their directories.
var dsDirs = map[string]string{}

// The fault a real vCenter sends for a wrong user or password.
const invalidLoginFault = `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Cannot complete login due to an incorrect user name or password.</faultstring><detail><InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"></InvalidLoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>`

// loginAllowed checks the user and password of a SOAP Login. vcsim 0.24.2 as Debian packages
// it let any password in during our tests (its own check did not hold), so the check is here.
// Other calls pass.
func loginAllowed(body []byte, user string, pass string) bool {
	var env struct {
		Login *struct {
			UserName string `xml:"userName"`
			Password string `xml:"password"`
		} `xml:"Body>Login"`
	}
	if err := xml.Unmarshal(body, &env); err != nil || env.Login == nil {
		return true
	}
	return env.Login.UserName == user && env.Login.Password == pass
}

type stats struct {
	mu           sync.Mutex
	requests     int
	unauthorized int
	seen         map[string]bool
	user         string
	// esx: the ESX model, whose SessionManager has no SessionIsActive (ESXi's has none either):
	// the sessions logged in are tracked here instead, from Login and Logout calls.
	esx  bool
	live map[string]bool
}

// track records the session a SOAP Login opened (its Set-Cookie) and the one a Logout closed.
func (s *stats) track(body []byte, r *http.Request, header http.Header) {
	if !s.esx {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case bytes.Contains(body, []byte("Login>")) || bytes.Contains(body, []byte("<Login ")):
		resp := http.Response{Header: header}
		for _, c := range resp.Cookies() {
			if c.Name == soap.SessionCookieName {
				s.live[c.Value] = true
			}
		}
	case bytes.Contains(body, []byte("Logout")):
		if c, err := r.Cookie(soap.SessionCookieName); err == nil {
			delete(s.live, c.Value)
		}
	}
}

func (s *stats) active(key string) bool {
	if s.esx {
		return s.live[key]
	}
	return sessionActive(key, s.user)
}

// allow tells whether a request carries the cookie of a logged-in session.
func (s *stats) allow(r *http.Request) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests++
	cookie, err := r.Cookie(soap.SessionCookieName)
	if err == nil && s.active(cookie.Value) {
		s.seen[cookie.Value] = true
		return true
	}
	s.unauthorized++
	return false
}

func (s *stats) report(user string) map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	active := 0
	for key := range s.seen {
		if s.active(key) {
			active++
		}
	}
	return map[string]int{
		"folderRequests": s.requests,
		"unauthorized":   s.unauthorized,
		"sessionsUsed":   len(s.seen),
		"sessionsActive": active,
	}
}

// sessionActive asks the simulator's session manager whether a session key is logged in.
func sessionActive(key string, user string) bool {
	sm := simulator.Map.SessionManager()
	res := sm.SessionIsActive(&simulator.Context{Map: simulator.Map}, &types.SessionIsActive{
		SessionID: key,
		UserName:  user,
	})
	body, ok := res.(*methods.SessionIsActiveBody)
	return ok && body.Res != nil && body.Res.Returnval
}

func setUp(ctx context.Context, c *govmomi.Client, cfg *config) (map[string]string, string, error) {
	finder := find.NewFinder(c.Client, false)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		return nil, "", err
	}
	finder.SetDatacenter(dc)
	host, err := finder.DefaultHostSystem(ctx)
	if err != nil {
		return nil, "", err
	}
	pool, err := finder.DefaultResourcePool(ctx)
	if err != nil {
		return nil, "", err
	}
	dss, err := host.ConfigManager().DatastoreSystem(ctx)
	if err != nil {
		return nil, "", err
	}
	for _, ds := range cfg.Datastores {
		dsDirs[ds.Name] = ds.Dir
		if _, err := dss.CreateLocalDatastore(ctx, ds.Name, ds.Dir); err != nil {
			return nil, "", fmt.Errorf("datastore %q: %v", ds.Name, err)
		}
	}
	folders, err := dc.Folders(ctx)
	if err != nil {
		return nil, "", err
	}
	morefs := map[string]string{}
	for i := range cfg.Vms {
		spec := &cfg.Vms[i]
		ref, err := registerVM(ctx, c, finder, folders.VmFolder, pool, spec)
		if err != nil {
			return nil, "", fmt.Errorf("VM %q: %v", spec.Name, err)
		}
		morefs[spec.Name] = ref
	}
	return morefs, dc.Name(), nil
}

func registerVM(
	ctx context.Context,
	c *govmomi.Client,
	finder *find.Finder,
	folder *object.Folder,
	pool *object.ResourcePool,
	spec *vmSpec,
) (string, error) {
	ds, err := finder.Datastore(ctx, spec.Datastore)
	if err != nil {
		return "", err
	}
	task, err := folder.RegisterVM(ctx, fmt.Sprintf("[%s] %s", spec.Datastore, spec.Vmx), spec.Name, false, pool, nil)
	if err != nil {
		return "", err
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return "", fmt.Errorf("register: %v", err)
	}
	vm := object.NewVirtualMachine(c.Client, info.Result.(types.ManagedObjectReference))

	devices, err := vm.Device(ctx)
	if err != nil {
		return "", err
	}
	var changes []types.BaseVirtualDeviceConfigSpec
	add := func(d types.BaseVirtualDevice) {
		devices = append(devices, d)
		changes = append(changes, &types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationAdd,
			Device:    d,
		})
	}
	controllers := map[string]types.BaseVirtualController{}
	// The real names of the disks attached under a placeholder, in the order they are added
	// (the order vcsim keeps them in).
	var renames []string
	for _, d := range spec.Disks {
		key := fmt.Sprintf("%s:%d", d.Controller, d.Bus)
		ctl := controllers[key]
		if ctl == nil {
			dev, err := newController(devices, d.Controller, d.Bus)
			if err != nil {
				return "", err
			}
			if d.Controller != "ide" {
				add(dev)
			}
			ctl = dev.(types.BaseVirtualController)
			controllers[key] = ctl
		}
		name := fmt.Sprintf("[%s] %s", spec.Datastore, d.File)
		disk := devices.CreateDisk(ctl, ds.Reference(), name)
		if !hasFlat(dsDirs[spec.Datastore], d.File) {
			// vcsim 0.24 accepts an existing disk only if it has a NAME-flat.vmdk (it looks
			// for that name first): a hosted sparse disk has none. Attach the .vmx in its place
			// (any existing file will do), and give the disk its real name afterwards.
			backing := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
			backing.FileName = fmt.Sprintf("[%s] %s", spec.Datastore, spec.Vmx)
			renames = append(renames, name)
		}
		unit := d.Unit
		disk.UnitNumber = &unit
		disk.CapacityInBytes = d.Capacity
		disk.CapacityInKB = d.Capacity / 1024
		disk.Key = devices.NewKey()
		add(disk)
	}
	for _, n := range spec.Nics {
		backing := &types.VirtualEthernetCardNetworkBackingInfo{
			VirtualDeviceDeviceBackingInfo: types.VirtualDeviceDeviceBackingInfo{DeviceName: n.Network},
		}
		dev, err := devices.CreateEthernetCard(n.Model, backing)
		if err != nil {
			return "", err
		}
		card := dev.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
		card.Key = devices.NewKey()
		if n.Mac != "" {
			card.AddressType = string(types.VirtualEthernetCardMacTypeManual)
			card.MacAddress = n.Mac
		}
		add(dev)
	}
	config := types.VirtualMachineConfigSpec{
		NumCPUs:           spec.Cpus,
		NumCoresPerSocket: spec.CoresPerSocket,
		MemoryMB:          spec.MemoryMB,
		Firmware:          spec.Firmware,
		GuestId:           spec.GuestID,
		DeviceChange:      changes,
	}
	if spec.SecureBoot {
		config.BootOptions = &types.VirtualMachineBootOptions{EfiSecureBootEnabled: types.NewBool(true)}
	}
	task, err = vm.Reconfigure(ctx, config)
	if err != nil {
		return "", err
	}
	if err := task.Wait(ctx); err != nil {
		return "", fmt.Errorf("reconfigure: %v", err)
	}
	if len(renames) > 0 {
		sim := simulator.Map.Get(vm.Reference()).(*simulator.VirtualMachine)
		placeholder := fmt.Sprintf("[%s] %s", spec.Datastore, spec.Vmx)
		simulator.Map.WithLock(sim, func() {
			for _, dev := range sim.Config.Hardware.Device {
				disk, ok := dev.(*types.VirtualDisk)
				if !ok || len(renames) == 0 {
					continue
				}
				b := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
				if b.FileName == placeholder {
					b.FileName = renames[0]
					renames = renames[1:]
				}
			}
		})
	}
	if spec.Snapshot != "" {
		task, err = vm.CreateSnapshot(ctx, spec.Snapshot, "", false, false)
		if err != nil {
			return "", err
		}
		if err := task.Wait(ctx); err != nil {
			return "", fmt.Errorf("snapshot: %v", err)
		}
	}
	if spec.PowerOn {
		task, err = vm.PowerOn(ctx)
		if err != nil {
			return "", err
		}
		if err := task.Wait(ctx); err != nil {
			return "", fmt.Errorf("power on: %v", err)
		}
	}
	return vm.Reference().Value, nil
}

func hasFlat(dir string, file string) bool {
	_, err := os.Stat(filepath.Join(dir, strings.Replace(file, ".vmdk", "-flat.vmdk", 1)))
	return err == nil
}

func newController(devices object.VirtualDeviceList, kind string, bus int32) (types.BaseVirtualDevice, error) {
	switch kind {
	case "ide":
		// vcsim's VMs have IDE controllers 0 and 1 already.
		for _, d := range devices.SelectByType((*types.VirtualIDEController)(nil)) {
			if d.(*types.VirtualIDEController).BusNumber == bus {
				return d, nil
			}
		}
		return nil, fmt.Errorf("no IDE controller %d", bus)
	case "sata":
		d := &types.VirtualAHCIController{}
		d.Key = devices.NewKey()
		d.BusNumber = bus
		return d, nil
	case "nvme":
		d, err := devices.CreateNVMEController()
		if err != nil {
			return nil, err
		}
		d.(*types.VirtualNVMEController).BusNumber = bus
		return d, nil
	default:
		d, err := devices.CreateSCSIController(kind)
		if err != nil {
			return nil, err
		}
		d.(types.BaseVirtualSCSIController).GetVirtualSCSIController().BusNumber = bus
		return d, nil
	}
}
